;; ai_oracle: asks the compute market for a verified job (an AI inference) and keeps its answer
;; (docs/spec/compute.md §3.12, examples/contracts/README.md).
;;
;;   request(bytes job, uint cpus, uint memory, uint timeout, uint max_price_cpu,
;;           uint max_price_gpu, uint verification, list mediators, uint max_fee, uint deadline,
;;           address agent)
;;       payable: bids for the job at the compute-market actor with the call's whole value as the
;;       deposit (a nested call of its `bid` with the contract's two extra arguments: `agent`, and
;;       `max_answer` = 256: the job's stdout comes back as the answer); sandbox executor, no
;;       GPU. Emits `Requested` (topic1 = the bid id, 32 bytes big-endian) and returns the bid
;;       id (an ABI uint: the deal keeps it). Reverts if the market refuses the bid.
;;   on_compute_result(uint deal, bytes root, bytes answer)
;;       the compute-market actor only: stores root || answer under "a" || deal (8 bytes
;;       big-endian) and emits `Answered` (topic1 = the deal, data = the answer).
;;   on_compute_failed(uint id, uint code)
;;       the compute-market actor only: stores the code under "f" || id and emits `Failed`
;;       (topic1 = the id, data = the code, 8 bytes big-endian).
;;   answer(uint deal)   returns the answer (an ABI bytes value); reverts `no answer yet`, or
;;                       `the job failed` once a failure was called back.
;;   root(uint deal)     returns the verified result root (ABI bytes, 32).
;;
;; Refunds (what a deal does not hold, a refunded escrow) come back to the contract's balance.
;;
;; Memory layout: 0..32 the compute-market actor's address; 32..128 the event topics Requested,
;; Answered, Failed; 128.. method name and messages; 1024..5120 the call's arguments; 8192.. the
;; bid's arguments; 12288 the caller; 12320 a storage key; 12400..12688 a stored answer;
;; 12800..12864 an event's topics; 16384.. return data.
(module
  (import "qoin" "input_size" (func $input_size (result i32)))
  (import "qoin" "input_read" (func $input_read (param i32)))
  (import "qoin" "return_data" (func $return_data (param i32 i32)))
  (import "qoin" "revert" (func $revert (param i32 i32)))
  (import "qoin" "storage_read" (func $storage_read (param i32 i32 i32 i32) (result i32)))
  (import "qoin" "storage_write" (func $storage_write (param i32 i32 i32 i32)))
  (import "qoin" "emit" (func $emit (param i32 i32 i32 i32)))
  (import "qoin" "caller" (func $caller (param i32)))
  (import "qoin" "value" (func $value (result i64)))
  (import "qoin" "call"
    (func $call (param i32 i32 i32 i32 i32 i64 i64) (result i32)))
  (import "qoin" "result_size" (func $result_size (result i32)))
  (import "qoin" "result_read" (func $result_read (param i32)))

  (memory (export "memory") 1)
  ;; actor_address("compute-market")
  (data (i32.const 0)
    "\4c\99\41\d0\d7\db\db\c6\05\24\20\24\d5\73\76\41\e7\c1\5a\5b\ed\c1\17\47\01\7b\1d\74\17\55\ff\f4")
  ;; SHA3-256("Requested"), SHA3-256("Answered"), SHA3-256("Failed")
  (data (i32.const 32)
    "\f9\d0\02\fa\bc\cc\cf\1f\a2\0f\9c\b8\ba\7c\43\03\f0\dd\ea\2d\8f\9f\49\08\9e\59\b0\93\29\bf\1b\0a")
  (data (i32.const 64)
    "\e0\dc\8c\ca\a6\a8\2a\62\9c\e4\69\b7\5f\9c\03\88\e1\29\7b\a3\0a\4d\67\8a\b7\8b\87\6a\04\0d\21\b4")
  (data (i32.const 96)
    "\49\f7\75\73\ba\0c\fc\ed\cb\fa\83\33\b5\41\75\7f\c2\55\0d\e4\74\0b\3a\b5\07\1e\47\6e\6e\db\60\df")
  (data (i32.const 128) "bid")
  (data (i32.const 160) "truncated arguments")                        ;; 19
  (data (i32.const 192) "wrong number of arguments")                  ;; 25
  (data (i32.const 224) "expected a uint argument")                   ;; 24
  (data (i32.const 256) "expected a 32-byte bytes argument")          ;; 33
  (data (i32.const 320) "expected an address argument")               ;; 28
  (data (i32.const 352) "expected a list of at most 8 addresses")     ;; 38
  (data (i32.const 400) "expected a bytes argument of at most 256")   ;; 40
  (data (i32.const 448) "trailing argument bytes")                    ;; 23
  (data (i32.const 480) "arguments too long")                         ;; 18
  (data (i32.const 512) "the compute market refused the bid")         ;; 34
  (data (i32.const 560) "only the compute market calls back")         ;; 34
  (data (i32.const 608) "no answer yet")                              ;; 13
  (data (i32.const 640) "the job failed")                             ;; 14
  (data (i32.const 672) "the market answered no bid id")              ;; 29

  (global $pos (mut i32) (i32.const 0))
  (global $end (mut i32) (i32.const 0))
  (global $out (mut i32) (i32.const 0))
  (global $len (mut i32) (i32.const 0))

  ;; -- reading the arguments ------------------------------------------------------------------

  ;; Read the call's arguments to 1024 and check their count (one LEB128 byte).
  (func $args (param $count i32)
    (local $size i32)
    (local.set $size (call $input_size))
    (if (i32.gt_u (local.get $size) (i32.const 4096))
      (then (call $revert (i32.const 480) (i32.const 18))))
    (call $input_read (i32.const 1024))
    (global.set $pos (i32.const 1024))
    (global.set $end (i32.add (i32.const 1024) (local.get $size)))
    (if (i32.ne (call $byte) (local.get $count))
      (then (call $revert (i32.const 192) (i32.const 25)))))

  (func $need (param $n i32)
    (if (i32.gt_u (i32.add (global.get $pos) (local.get $n)) (global.get $end))
      (then (call $revert (i32.const 160) (i32.const 19)))))

  (func $byte (result i32)
    (local $b i32)
    (call $need (i32.const 1))
    (local.set $b (i32.load8_u (global.get $pos)))
    (global.set $pos (i32.add (global.get $pos) (i32.const 1)))
    (local.get $b))

  ;; A LEB128 varint of at most 10 bytes.
  (func $leb (result i64)
    (local $b i32) (local $shift i64) (local $value i64) (local $n i32)
    (loop $more
      (local.set $b (call $byte))
      (local.set $value
        (i64.or (local.get $value)
          (i64.shl (i64.extend_i32_u (i32.and (local.get $b) (i32.const 0x7f)))
                   (local.get $shift))))
      (local.set $shift (i64.add (local.get $shift) (i64.const 7)))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (if (i32.gt_u (local.get $n) (i32.const 10))
        (then (call $revert (i32.const 224) (i32.const 24))))
      (br_if $more (i32.and (local.get $b) (i32.const 0x80))))
    (local.get $value))

  (func $uint (result i64)
    (if (i32.ne (call $byte) (i32.const 0))
      (then (call $revert (i32.const 224) (i32.const 24))))
    (call $leb))

  ;; A bytes value of exactly 32 bytes; its data's address.
  (func $bytes32 (result i32)
    (local $at i32)
    (if (i32.or (i32.ne (call $byte) (i32.const 1)) (i32.ne (call $byte) (i32.const 32)))
      (then (call $revert (i32.const 256) (i32.const 33))))
    (call $need (i32.const 32))
    (local.set $at (global.get $pos))
    (global.set $pos (i32.add (global.get $pos) (i32.const 32)))
    (local.get $at))

  ;; A bytes value of at most 256 bytes; its data's address ($len its length).
  (func $bytes_short (result i32)
    (local $at i32) (local $n i64)
    (if (i32.ne (call $byte) (i32.const 1))
      (then (call $revert (i32.const 400) (i32.const 40))))
    (local.set $n (call $leb))
    (if (i64.gt_u (local.get $n) (i64.const 256))
      (then (call $revert (i32.const 400) (i32.const 40))))
    (global.set $len (i32.wrap_i64 (local.get $n)))
    (call $need (global.get $len))
    (local.set $at (global.get $pos))
    (global.set $pos (i32.add (global.get $pos) (global.get $len)))
    (local.get $at))

  (func $address
    (if (i32.ne (call $byte) (i32.const 3))
      (then (call $revert (i32.const 320) (i32.const 28))))
    (call $need (i32.const 32))
    (global.set $pos (i32.add (global.get $pos) (i32.const 32))))

  (func $addresses
    (local $count i32)
    (if (i32.ne (call $byte) (i32.const 5))
      (then (call $revert (i32.const 352) (i32.const 38))))
    (local.set $count (call $byte))
    (if (i32.gt_u (local.get $count) (i32.const 8))
      (then (call $revert (i32.const 352) (i32.const 38))))
    (block $done
      (loop $each
        (br_if $done (i32.eqz (local.get $count)))
        (call $address)
        (local.set $count (i32.sub (local.get $count) (i32.const 1)))
        (br $each))))

  (func $finish
    (if (i32.ne (global.get $pos) (global.get $end))
      (then (call $revert (i32.const 448) (i32.const 23)))))

  ;; -- writing --------------------------------------------------------------------------------

  (func $put (param $b i32)
    (i32.store8 (global.get $out) (local.get $b))
    (global.set $out (i32.add (global.get $out) (i32.const 1))))

  ;; Copy the argument bytes read since $from to the output.
  (func $copy_since (param $from i32)
    (local $n i32)
    (local.set $n (i32.sub (global.get $pos) (local.get $from)))
    (memory.copy (global.get $out) (local.get $from) (local.get $n))
    (global.set $out (i32.add (global.get $out) (local.get $n))))

  ;; Write $value big-endian in 8 bytes at $at.
  (func $be64 (param $at i32) (param $value i64)
    (local $i i32)
    (local.set $i (i32.const 7))
    (loop $bytes
      (i32.store8 (i32.add (local.get $at) (local.get $i)) (i32.wrap_i64 (local.get $value)))
      (local.set $value (i64.shr_u (local.get $value) (i64.const 8)))
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (br_if $bytes (i32.ge_s (local.get $i) (i32.const 0)))))

  ;; The storage key prefix || id (8 bytes big-endian) at 12320.
  (func $key (param $prefix i32) (param $id i64)
    (i32.store8 (i32.const 12320) (local.get $prefix))
    (call $be64 (i32.const 12321) (local.get $id)))

  ;; Emit the event named by the topic at $name with topic1 = $id (32 bytes big-endian).
  (func $event (param $name i32) (param $id i64) (param $data i32) (param $size i32)
    (memory.copy (i32.const 12800) (local.get $name) (i32.const 32))
    (memory.fill (i32.const 12832) (i32.const 0) (i32.const 24))
    (call $be64 (i32.const 12856) (local.get $id))
    (call $emit (i32.const 12800) (i32.const 2) (local.get $data) (local.get $size)))

  ;; Revert unless the caller is the compute-market actor.
  (func $from_market
    (call $caller (i32.const 12288))
    (if (i32.or
          (i32.or (i64.ne (i64.load (i32.const 12288)) (i64.load (i32.const 0)))
                  (i64.ne (i64.load (i32.const 12296)) (i64.load (i32.const 8))))
          (i32.or (i64.ne (i64.load (i32.const 12304)) (i64.load (i32.const 16)))
                  (i64.ne (i64.load (i32.const 12312)) (i64.load (i32.const 24)))))
      (then (call $revert (i32.const 560) (i32.const 34)))))

  ;; -- methods --------------------------------------------------------------------------------

  (func (export "request")
    (local $from i32) (local $status i32) (local $size i32) (local $id i64)
    (call $args (i32.const 11))
    (global.set $out (i32.const 8192))
    (call $put (i32.const 16))                            ;; the bid's 16 arguments
    (local.set $from (global.get $pos))
    (drop (call $bytes32))                                ;; job
    (drop (call $uint))                                   ;; cpus
    (drop (call $uint))                                   ;; memory
    (call $copy_since (local.get $from))
    (call $put (i32.const 0)) (call $put (i32.const 0))   ;; gpus 0
    (call $put (i32.const 2)) (call $put (i32.const 0))   ;; gpu_model ""
    (call $put (i32.const 0)) (call $put (i32.const 0))   ;; executor 0 (sandbox)
    (local.set $from (global.get $pos))
    (drop (call $uint))                                   ;; timeout
    (drop (call $uint))                                   ;; max_price_cpu
    (drop (call $uint))                                   ;; max_price_gpu
    (drop (call $uint))                                   ;; verification
    (call $copy_since (local.get $from))
    (call $put (i32.const 0)) (call $put (i32.const 0))   ;; collateral_ppm 0 (any)
    (local.set $from (global.get $pos))
    (call $addresses)                                     ;; mediators
    (drop (call $uint))                                   ;; max_fee
    (drop (call $uint))                                   ;; deadline
    (call $address)                                       ;; agent
    (call $finish)
    (call $copy_since (local.get $from))
    (call $put (i32.const 0)) (call $put (i32.const 0x80)) (call $put (i32.const 2)) ;; 256
    (local.set $status
      (call $call (i32.const 0) (i32.const 128) (i32.const 3) (i32.const 8192)
        (i32.sub (global.get $out) (i32.const 8192)) (call $value) (i64.const 0)))
    (if (local.get $status) (then (call $revert (i32.const 512) (i32.const 34))))
    (local.set $size (call $result_size))
    (if (i32.or (i32.lt_u (local.get $size) (i32.const 2)) (i32.gt_u (local.get $size) (i32.const 11)))
      (then (call $revert (i32.const 672) (i32.const 29))))
    (call $result_read (i32.const 16384))
    (global.set $pos (i32.const 16384))
    (global.set $end (i32.add (i32.const 16384) (local.get $size)))
    (local.set $id (call $uint))
    (call $event (i32.const 32) (local.get $id) (i32.const 0) (i32.const 0))
    (call $return_data (i32.const 16384) (local.get $size)))

  (func (export "on_compute_result")
    (local $id i64) (local $root i32) (local $answer i32)
    (call $from_market)
    (call $args (i32.const 3))
    (local.set $id (call $uint))
    (local.set $root (call $bytes32))
    (local.set $answer (call $bytes_short))
    (call $finish)
    (memory.copy (i32.const 12400) (local.get $root) (i32.const 32))
    (memory.copy (i32.const 12432) (local.get $answer) (global.get $len))
    (call $key (i32.const 0x61) (local.get $id))          ;; "a"
    (call $storage_write (i32.const 12320) (i32.const 9) (i32.const 12400)
      (i32.add (i32.const 32) (global.get $len)))
    (call $event (i32.const 64) (local.get $id) (i32.const 12432) (global.get $len)))

  (func (export "on_compute_failed")
    (local $id i64)
    (call $from_market)
    (call $args (i32.const 2))
    (local.set $id (call $uint))
    (call $be64 (i32.const 12400) (call $uint))
    (call $finish)
    (call $key (i32.const 0x66) (local.get $id))          ;; "f"
    (call $storage_write (i32.const 12320) (i32.const 9) (i32.const 12400) (i32.const 8))
    (call $event (i32.const 96) (local.get $id) (i32.const 12400) (i32.const 8)))

  ;; The stored root || answer of a deal (its size), or a revert.
  (func $stored (result i32)
    (local $id i64) (local $size i32)
    (call $args (i32.const 1))
    (local.set $id (call $uint))
    (call $finish)
    (call $key (i32.const 0x61) (local.get $id))
    (local.set $size (call $storage_read (i32.const 12320) (i32.const 9) (i32.const 12400) (i32.const 288)))
    (if (i32.eq (local.get $size) (i32.const -1))
      (then
        (call $key (i32.const 0x66) (local.get $id))
        (if (i32.ne (call $storage_read (i32.const 12320) (i32.const 9) (i32.const 12800) (i32.const 8))
                    (i32.const -1))
          (then (call $revert (i32.const 640) (i32.const 14))))
        (call $revert (i32.const 608) (i32.const 13))))
    (local.get $size))

  ;; Return the ABI bytes value of $len bytes at $at.
  (func $return_bytes (param $at i32) (param $n i32)
    (global.set $out (i32.const 16384))
    (call $put (i32.const 1))
    (if (i32.lt_u (local.get $n) (i32.const 128))
      (then (call $put (local.get $n)))
      (else
        (call $put (i32.or (i32.and (local.get $n) (i32.const 0x7f)) (i32.const 0x80)))
        (call $put (i32.shr_u (local.get $n) (i32.const 7)))))
    (memory.copy (global.get $out) (local.get $at) (local.get $n))
    (call $return_data (i32.const 16384)
      (i32.add (i32.sub (global.get $out) (i32.const 16384)) (local.get $n))))

  (func (export "answer")
    (local $size i32)
    (local.set $size (call $stored))
    (call $return_bytes (i32.const 12432) (i32.sub (local.get $size) (i32.const 32))))

  (func (export "root")
    (drop (call $stored))
    (call $return_bytes (i32.const 12400) (i32.const 32)))
)
