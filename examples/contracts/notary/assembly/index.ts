// notary: record who notarised a document digest first, and check hybrid post-quantum
// attestations (examples/contracts/README.md; the host ABI is docs/spec/contracts.md section 4).
//
//   notarize(bytes digest)         records the caller and the block height for a 32-byte digest;
//                                  reverts "already notarized" if it was; emits Notarized:
//                                  topic0 = SHA3-256("Notarized"), topic1 = the digest,
//                                  topic2 = the caller, data = the height (8 bytes big-endian)
//   owner_of(bytes digest)         returns the list (address owner, uint height); reverts
//                                  "not notarized" if the digest was never notarised
//   attest(bytes public_key, bytes message, bytes signature)
//                                  returns bool: whether the signature is a valid hybrid
//                                  signature of the message by the key; a valid one is recorded
//                                  under ("a", SHA3-256(message), signer) and emits Attested:
//                                  topic0 = SHA3-256("Attested"), topic1 = SHA3-256(message),
//                                  topic2 = the signer's address (SHA3-256 of the key), data =
//                                  the height (8 bytes big-endian)
//
// Arguments are the ABI argument list (qoin.execution.abi); a bytes value is tag 0x01, a LEB128
// length, then the bytes.

// -- the host ABI ---------------------------------------------------------------------------------

@external("qoin", "input_size") declare function input_size(): i32;
@external("qoin", "input_read") declare function input_read(ptr: usize): void;
@external("qoin", "return_data") declare function return_data(ptr: usize, len: i32): void;
@external("qoin", "revert") declare function host_revert(ptr: usize, len: i32): void;
@external("qoin", "caller") declare function host_caller(out: usize): void;
@external("qoin", "block_height") declare function block_height(): i64;
@external("qoin", "storage_read")
declare function storage_read(key: usize, keyLen: i32, out: usize, cap: i32): i32;
@external("qoin", "storage_write")
declare function storage_write(key: usize, keyLen: i32, value: usize, valueLen: i32): void;
@external("qoin", "emit")
declare function emit(topics: usize, count: i32, data: usize, dataLen: i32): void;
@external("qoin", "sha3") declare function sha3(ptr: usize, len: i32, out: usize): void;
@external("qoin", "verify_signature")
declare function verify_signature(
  pk: usize, pkLen: i32, msg: usize, msgLen: i32, sig: usize, sigLen: i32,
): i32;

const TAG_UINT: u8 = 0x00;
const TAG_BYTES: u8 = 0x01;
const TAG_ADDRESS: u8 = 0x03;
const TAG_BOOL: u8 = 0x04;
const TAG_LIST: u8 = 0x05;
const MAX_INPUT: i32 = 64 * 1024;

// -- helpers --------------------------------------------------------------------------------------

/** Revert with a message (never returns). */
function fail(message: string): void {
  const text = String.UTF8.encode(message);
  host_revert(changetype<usize>(text), text.byteLength);
  unreachable();
}

/** What a failed assertion or a bounds check calls (wired with --use abort=...). */
function abort(message: string | null, file: string | null, line: u32, column: u32): void {
  fail(message == null ? "abort" : message);
}

/** A byte string in linear memory. */
class Bytes {
  constructor(public ptr: usize, public len: i32) {}
}

/** `len` fresh bytes. */
function alloc(len: i32): usize {
  return changetype<usize>(new ArrayBuffer(len));
}

/** Reads the ABI argument list. */
class Args {
  pos: usize;
  end: usize;

  constructor(count: u64) {
    const size = input_size();
    if (size > MAX_INPUT) fail("arguments too long");
    const buffer = alloc(size);
    input_read(buffer);
    this.pos = buffer;
    this.end = buffer + <usize>size;
    if (this.varint() != count) fail("wrong number of arguments");
  }

  byte(): u8 {
    if (this.pos >= this.end) fail("truncated arguments");
    const value = load<u8>(this.pos);
    this.pos += 1;
    return value;
  }

  varint(): u64 {
    let value: u64 = 0;
    let shift: u64 = 0;
    while (true) {
      if (shift >= 64) fail("a varint is too long");
      const byte = this.byte();
      if (shift == 63 && byte > 1) fail("a varint is too long"); // the tenth group holds bit 63
      value |= (<u64>(byte & 0x7f)) << shift;
      if ((byte & 0x80) == 0) break;
      shift += 7;
    }
    return value;
  }

  bytes(): Bytes {
    if (this.byte() != TAG_BYTES) fail("expected a bytes argument");
    const len = this.varint();
    if (len > <u64>(this.end - this.pos)) fail("truncated arguments");
    const value = new Bytes(this.pos, <i32>len);
    this.pos += <usize>len;
    return value;
  }

  done(): void {
    if (this.pos != this.end) fail("trailing argument bytes");
  }
}

/** Write `value` big-endian at `ptr`. */
function putU64(ptr: usize, value: u64): void {
  store<u64>(ptr, bswap<u64>(value));
}

/** Append a LEB128 varint at `ptr`; returns the end. */
function putVarint(ptr: usize, value: u64): usize {
  while (true) {
    const group = <u8>(value & 0x7f);
    value >>= 7;
    if (value == 0) {
      store<u8>(ptr, group);
      return ptr + 1;
    }
    store<u8>(ptr, group | 0x80);
    ptr += 1;
  }
}

/** The 32-byte digest of the name, for a topic. */
function topic(name: string): usize {
  const raw = String.UTF8.encode(name);
  const out = alloc(32);
  sha3(changetype<usize>(raw), raw.byteLength, out);
  return out;
}

/** The key "n" ‖ digest of a notarisation. */
function notaryKey(digest: Bytes): usize {
  const key = alloc(33);
  store<u8>(key, 0x6e); // "n"
  memory.copy(key + 1, digest.ptr, 32);
  return key;
}

function returnBool(value: bool): void {
  const out = alloc(2);
  store<u8>(out, TAG_BOOL);
  store<u8>(out + 1, value ? 1 : 0);
  return_data(out, 2);
}

// -- methods --------------------------------------------------------------------------------------

export function notarize(): void {
  const args = new Args(1);
  const digest = args.bytes();
  args.done();
  if (digest.len != 32) fail("a digest is 32 bytes");
  const key = notaryKey(digest);
  if (storage_read(key, 33, 0, 0) != -1) fail("already notarized");
  // The record: caller (32 bytes) ‖ height (8 bytes big-endian).
  const record = alloc(40);
  host_caller(record);
  putU64(record + 32, <u64>block_height());
  storage_write(key, 33, record, 40);
  const topics = alloc(96);
  memory.copy(topics, topic("Notarized"), 32);
  memory.copy(topics + 32, digest.ptr, 32);
  memory.copy(topics + 64, record, 32);
  emit(topics, 3, record + 32, 8);
}

export function owner_of(): void {
  const args = new Args(1);
  const digest = args.bytes();
  args.done();
  if (digest.len != 32) fail("a digest is 32 bytes");
  const record = alloc(40);
  if (storage_read(notaryKey(digest), 33, record, 40) != 40) fail("not notarized");
  // list(address owner, uint height): 0x05, count 2, 0x03 ‖ 32 bytes, 0x00 ‖ varint
  const out = alloc(2 + 33 + 11);
  store<u8>(out, TAG_LIST);
  store<u8>(out + 1, 2);
  store<u8>(out + 2, TAG_ADDRESS);
  memory.copy(out + 3, record, 32);
  store<u8>(out + 35, TAG_UINT);
  const end = putVarint(out + 36, bswap<u64>(load<u64>(record + 32)));
  return_data(out, <i32>(end - out));
}

export function attest(): void {
  const args = new Args(3);
  const publicKey = args.bytes();
  const message = args.bytes();
  const signature = args.bytes();
  args.done();
  const valid =
    verify_signature(
      publicKey.ptr, publicKey.len, message.ptr, message.len, signature.ptr, signature.len,
    ) == 1;
  if (valid) {
    // The key ("a" ‖ SHA3-256(message) ‖ signer) lies right after the topic at topics + 32.
    const topics = alloc(96);
    memory.copy(topics, topic("Attested"), 32);
    sha3(message.ptr, message.len, topics + 32);
    sha3(publicKey.ptr, publicKey.len, topics + 64);
    const key = alloc(65);
    store<u8>(key, 0x61); // "a"
    memory.copy(key + 1, topics + 32, 64);
    const height = alloc(8);
    putU64(height, <u64>block_height());
    storage_write(key, 65, height, 8);
    emit(topics, 3, height, 8);
  }
  returnBool(valid);
}
