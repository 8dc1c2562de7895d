;; counter: a storage counter with an event (docs/spec/contracts.md, examples/contracts/README.md).
;;
;;   increment()  adds 1 to the value under storage key "count" (8 bytes big-endian; absent = 0)
;;                and emits an event: topic0 = SHA3-256("Incremented"), data = the new count as
;;                8 bytes big-endian
;;   get()        returns the count as one ABI uint value (tag 0x00, then the LEB128 varint)
;;
;; Memory layout: 0..5 the key "count"; 32..64 the topic; 64..72 the count (big-endian);
;; 96..107 the return value.
(module
  (import "qoin" "storage_read" (func $storage_read (param i32 i32 i32 i32) (result i32)))
  (import "qoin" "storage_write" (func $storage_write (param i32 i32 i32 i32)))
  (import "qoin" "emit" (func $emit (param i32 i32 i32 i32)))
  (import "qoin" "return_data" (func $return_data (param i32 i32)))
  (import "qoin" "revert" (func $revert (param i32 i32)))

  (memory (export "memory") 1)
  (data (i32.const 0) "count")
  (data (i32.const 32)
    "\6a\bb\fc\ed\d0\07\21\b6\58\d1\4e\84\de\15\1f\92\c5\ca\39\62\de\49\23\f5\e6\54\aa\24\ba\f1\f7\16")
  (data (i32.const 128) "the stored count is not 8 bytes")

  ;; The stored count (0 when absent).
  (func $load (result i64)
    (local $size i32) (local $i i32) (local $value i64)
    (local.set $size (call $storage_read (i32.const 0) (i32.const 5) (i32.const 64) (i32.const 8)))
    (if (i32.eq (local.get $size) (i32.const -1)) (then (return (i64.const 0))))
    (if (i32.ne (local.get $size) (i32.const 8))
      (then (call $revert (i32.const 128) (i32.const 31))))
    (loop $bytes
      (local.set $value
        (i64.or (i64.shl (local.get $value) (i64.const 8))
                (i64.extend_i32_u (i32.load8_u offset=64 (local.get $i)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $bytes (i32.lt_u (local.get $i) (i32.const 8))))
    (local.get $value))

  ;; Write a count big-endian at 64..72.
  (func $put (param $value i64)
    (local $i i32)
    (local.set $i (i32.const 7))
    (loop $bytes
      (i32.store8 offset=64 (local.get $i) (i32.wrap_i64 (local.get $value)))
      (local.set $value (i64.shr_u (local.get $value) (i64.const 8)))
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (br_if $bytes (i32.ge_s (local.get $i) (i32.const 0)))))

  (func (export "increment")
    (call $put (i64.add (call $load) (i64.const 1)))
    (call $storage_write (i32.const 0) (i32.const 5) (i32.const 64) (i32.const 8))
    (call $emit (i32.const 32) (i32.const 1) (i32.const 64) (i32.const 8)))

  (func (export "get")
    (local $value i64) (local $at i32) (local $byte i32)
    (local.set $value (call $load))
    (i32.store8 (i32.const 96) (i32.const 0))
    (local.set $at (i32.const 97))
    ;; LEB128: seven bits at a time, the high bit set on every byte but the last.
    (loop $groups
      (local.set $byte (i32.and (i32.wrap_i64 (local.get $value)) (i32.const 0x7f)))
      (local.set $value (i64.shr_u (local.get $value) (i64.const 7)))
      (if (i64.ne (local.get $value) (i64.const 0))
        (then (local.set $byte (i32.or (local.get $byte) (i32.const 0x80)))))
      (i32.store8 (local.get $at) (local.get $byte))
      (local.set $at (i32.add (local.get $at) (i32.const 1)))
      (br_if $groups (i64.ne (local.get $value) (i64.const 0))))
    (call $return_data (i32.const 96) (i32.sub (local.get $at) (i32.const 96))))
)
