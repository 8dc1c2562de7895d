;; token: a fungible token (docs/spec/contracts.md; examples/contracts/README.md).
;;
;;   init(uint supply)                  mints `supply` to the deployer (runs once, at deployment)
;;   transfer(address to, uint amount)  moves `amount` from the caller to `to`; reverts
;;                                      "insufficient balance" if the caller has less; emits
;;                                      Transfer: topic0 = SHA3-256("Transfer"), topic1 = from,
;;                                      topic2 = to, data = amount as 8 bytes big-endian
;;   balance_of(address owner)          returns the balance as one ABI uint
;;   total_supply()                     returns the supply as one ABI uint
;;
;; Arguments are the ABI argument list (qoin.execution.abi): a LEB128 count, then tagged values
;; (0x00 uint: LEB128; 0x03 address: 32 bytes). Storage: "supply" -> the supply, "b" ‖ address
;; -> a balance, each 8 bytes big-endian (absent = 0). Minting emits Transfer from the zero
;; address.
;;
;; Memory layout: 0..32 the Transfer topic; 32..128 an event's topics (topic0, from, to);
;; 128..161 a balance key; 192..200 a value (big-endian); 208..214 "supply"; 256.. revert texts;
;; 512..528 return data; 1024..2048 the arguments.
(module
  (import "qoin" "input_size" (func $input_size (result i32)))
  (import "qoin" "input_read" (func $input_read (param i32)))
  (import "qoin" "return_data" (func $return_data (param i32 i32)))
  (import "qoin" "revert" (func $revert (param i32 i32)))
  (import "qoin" "caller" (func $caller (param i32)))
  (import "qoin" "storage_read" (func $storage_read (param i32 i32 i32 i32) (result i32)))
  (import "qoin" "storage_write" (func $storage_write (param i32 i32 i32 i32)))
  (import "qoin" "emit" (func $emit (param i32 i32 i32 i32)))

  (memory (export "memory") 1)
  (data (i32.const 0)
    "\c9\6c\b9\0d\94\ee\ef\b2\ab\13\db\5c\8e\5e\78\46\3c\9b\22\47\df\2e\0c\4c\7b\6a\9d\e9\ef\4c\11\a6")
  (data (i32.const 208) "supply")
  (data (i32.const 256) "insufficient balance")       ;; 256, 20
  (data (i32.const 288) "arguments too long")         ;; 288, 18
  (data (i32.const 320) "wrong number of arguments")  ;; 320, 25
  (data (i32.const 352) "expected a uint argument")   ;; 352, 24
  (data (i32.const 384) "expected an address")        ;; 384, 19
  (data (i32.const 416) "truncated arguments")        ;; 416, 19
  (data (i32.const 448) "trailing argument bytes")    ;; 448, 23
  (data (i32.const 480) "already initialised")        ;; 480, 19

  (global $pos (mut i32) (i32.const 1024))
  (global $end (mut i32) (i32.const 1024))

  (func $fail (param $text i32) (param $size i32)
    (call $revert (local.get $text) (local.get $size))
    unreachable)

  ;; -- arguments ---------------------------------------------------------------------------------

  ;; Read the arguments into 1024.. and expect `count` of them.
  (func $args (param $count i32)
    (local $size i32)
    (local.set $size (call $input_size))
    (if (i32.gt_u (local.get $size) (i32.const 1024))
      (then (call $fail (i32.const 288) (i32.const 18))))
    (call $input_read (i32.const 1024))
    (global.set $pos (i32.const 1024))
    (global.set $end (i32.add (i32.const 1024) (local.get $size)))
    (if (i64.ne (call $varint) (i64.extend_i32_u (local.get $count)))
      (then (call $fail (i32.const 320) (i32.const 25)))))

  (func $byte (result i32)
    (local $at i32)
    (local.set $at (global.get $pos))
    (if (i32.ge_u (local.get $at) (global.get $end))
      (then (call $fail (i32.const 416) (i32.const 19))))
    (global.set $pos (i32.add (local.get $at) (i32.const 1)))
    (i32.load8_u (local.get $at)))

  ;; An unsigned LEB128 varint of at most ten bytes.
  (func $varint (result i64)
    (local $value i64) (local $shift i64) (local $byte i32)
    (loop $groups
      (if (i64.ge_u (local.get $shift) (i64.const 70))
        (then (call $fail (i32.const 352) (i32.const 24))))
      (local.set $byte (call $byte))
      ;; The tenth group holds bit 63 only.
      (if (i32.and (i64.eq (local.get $shift) (i64.const 63)) (i32.gt_u (local.get $byte) (i32.const 1)))
        (then (call $fail (i32.const 352) (i32.const 24))))
      (local.set $value
        (i64.or (local.get $value)
                (i64.shl (i64.extend_i32_u (i32.and (local.get $byte) (i32.const 0x7f)))
                         (local.get $shift))))
      (local.set $shift (i64.add (local.get $shift) (i64.const 7)))
      (br_if $groups (i32.and (local.get $byte) (i32.const 0x80))))
    (local.get $value))

  (func $uint (result i64)
    (if (i32.ne (call $byte) (i32.const 0x00))
      (then (call $fail (i32.const 352) (i32.const 24))))
    (call $varint))

  ;; An address value: returns where its 32 bytes are.
  (func $address (result i32)
    (local $at i32)
    (if (i32.ne (call $byte) (i32.const 0x03))
      (then (call $fail (i32.const 384) (i32.const 19))))
    (local.set $at (global.get $pos))
    (if (i32.gt_u (i32.add (local.get $at) (i32.const 32)) (global.get $end))
      (then (call $fail (i32.const 416) (i32.const 19))))
    (global.set $pos (i32.add (local.get $at) (i32.const 32)))
    (local.get $at))

  (func $done
    (if (i32.ne (global.get $pos) (global.get $end))
      (then (call $fail (i32.const 448) (i32.const 23)))))

  ;; -- storage -----------------------------------------------------------------------------------

  (func $load (param $key i32) (param $size i32) (result i64)
    (local $found i32) (local $i i32) (local $value i64)
    (local.set $found
      (call $storage_read (local.get $key) (local.get $size) (i32.const 192) (i32.const 8)))
    (if (i32.eq (local.get $found) (i32.const -1)) (then (return (i64.const 0))))
    (loop $bytes
      (local.set $value
        (i64.or (i64.shl (local.get $value) (i64.const 8))
                (i64.extend_i32_u (i32.load8_u offset=192 (local.get $i)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $bytes (i32.lt_u (local.get $i) (i32.const 8))))
    (local.get $value))

  ;; Write `value` big-endian at 192..200.
  (func $put (param $value i64)
    (local $i i32)
    (local.set $i (i32.const 7))
    (loop $bytes
      (i32.store8 offset=192 (local.get $i) (i32.wrap_i64 (local.get $value)))
      (local.set $value (i64.shr_u (local.get $value) (i64.const 8)))
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (br_if $bytes (i32.ge_s (local.get $i) (i32.const 0)))))

  (func $store (param $key i32) (param $size i32) (param $value i64)
    (call $put (local.get $value))
    (call $storage_write (local.get $key) (local.get $size) (i32.const 192) (i32.const 8)))

  ;; The balance key of the address at `owner`, at 128..161.
  (func $key (param $owner i32) (result i32)
    (i32.store8 (i32.const 128) (i32.const 0x62))  ;; "b"
    (memory.copy (i32.const 129) (local.get $owner) (i32.const 32))
    (i32.const 128))

  (func $balance (param $owner i32) (result i64)
    (call $load (call $key (local.get $owner)) (i32.const 33)))

  (func $set_balance (param $owner i32) (param $value i64)
    (call $store (call $key (local.get $owner)) (i32.const 33) (local.get $value)))

  ;; Emit Transfer(from at 64, to at 96, amount).
  (func $transferred (param $amount i64)
    (memory.copy (i32.const 32) (i32.const 0) (i32.const 32))
    (call $put (local.get $amount))
    (call $emit (i32.const 32) (i32.const 3) (i32.const 192) (i32.const 8)))

  ;; Return one ABI uint.
  (func $return_uint (param $value i64)
    (local $at i32) (local $byte i32)
    (i32.store8 (i32.const 512) (i32.const 0))
    (local.set $at (i32.const 513))
    (loop $groups
      (local.set $byte (i32.and (i32.wrap_i64 (local.get $value)) (i32.const 0x7f)))
      (local.set $value (i64.shr_u (local.get $value) (i64.const 7)))
      (if (i64.ne (local.get $value) (i64.const 0))
        (then (local.set $byte (i32.or (local.get $byte) (i32.const 0x80)))))
      (i32.store8 (local.get $at) (local.get $byte))
      (local.set $at (i32.add (local.get $at) (i32.const 1)))
      (br_if $groups (i64.ne (local.get $value) (i64.const 0))))
    (call $return_data (i32.const 512) (i32.sub (local.get $at) (i32.const 512))))

  ;; -- methods -----------------------------------------------------------------------------------

  (func (export "init")
    (local $supply i64)
    (call $args (i32.const 1))
    (local.set $supply (call $uint))
    (call $done)
    (if (i32.ne (call $storage_read (i32.const 208) (i32.const 6) (i32.const 192) (i32.const 0))
                (i32.const -1))
      (then (call $fail (i32.const 480) (i32.const 19))))
    (call $store (i32.const 208) (i32.const 6) (local.get $supply))
    (call $caller (i32.const 96))
    (call $set_balance (i32.const 96) (local.get $supply))
    (memory.fill (i32.const 64) (i32.const 0) (i32.const 32))
    (call $transferred (local.get $supply)))

  (func (export "transfer")
    (local $to i32) (local $amount i64) (local $from_balance i64)
    (call $args (i32.const 2))
    (local.set $to (call $address))
    (local.set $amount (call $uint))
    (call $done)
    (call $caller (i32.const 64))
    (memory.copy (i32.const 96) (local.get $to) (i32.const 32))
    (local.set $from_balance (call $balance (i32.const 64)))
    (if (i64.lt_u (local.get $from_balance) (local.get $amount))
      (then (call $fail (i32.const 256) (i32.const 20))))
    (call $set_balance (i32.const 64) (i64.sub (local.get $from_balance) (local.get $amount)))
    ;; The supply bounds every balance, so the sum cannot overflow (from = to reads the new value).
    (call $set_balance (i32.const 96)
      (i64.add (call $balance (i32.const 96)) (local.get $amount)))
    (call $transferred (local.get $amount)))

  (func (export "balance_of")
    (local $owner i32)
    (call $args (i32.const 1))
    (local.set $owner (call $address))
    (call $done)
    (call $return_uint (call $balance (local.get $owner))))

  (func (export "total_supply")
    (call $args (i32.const 0))
    (call $done)
    (call $return_uint (call $load (i32.const 208) (i32.const 6))))
)
