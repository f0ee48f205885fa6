/**
 * The protobuf messages of the SPIFFE Workload API's X.509-SVID profile (SPIFFE Workload API
 * standard §5.1; go-spiffe v2's workload.proto), encoded and decoded by hand: three messages of
 * strings, bytes, repeated fields and one map do not justify a protobuf runtime in the proxy.
 * The tests decode and encode the same messages with protobufjs from the standard's .proto file,
 * so both implementations must agree.
 *
 *   message X509SVIDRequest {}
 *   message X509SVIDResponse {
 *     repeated X509SVID svids = 1;
 *     repeated bytes crl = 2;
 *     map<string, bytes> federated_bundles = 3;
 *   }
 *   message X509SVID {
 *     string spiffe_id = 1; bytes x509_svid = 2; bytes x509_svid_key = 3; bytes bundle = 4;
 *     string hint = 5;
 *   }
 */

export interface X509SvidMessage {
  readonly spiffeId: string;
  /** DER certificates, concatenated, leaf first. */
  readonly x509Svid: Buffer;
  /** PKCS#8 DER private key. */
  readonly x509SvidKey: Buffer;
  /** DER CA certificates of the SVID's trust domain, concatenated. */
  readonly bundle: Buffer;
  readonly hint: string;
}

export interface X509SvidResponseMessage {
  readonly svids: readonly X509SvidMessage[];
  readonly crl: readonly Buffer[];
  /** Keyed by the trust domain's SPIFFE ID (`spiffe://partner.example`); DER certificates, concatenated. */
  readonly federatedBundles: ReadonlyMap<string, Buffer>;
}

const WIRE_VARINT = 0;
const WIRE_I64 = 1;
const WIRE_LEN = 2;
const WIRE_I32 = 5;

class Reader {
  private pos = 0;
  private readonly buf: Buffer;
  private readonly end: number;

  constructor(buf: Buffer, start = 0, end = buf.length) {
    this.buf = buf;
    this.pos = start;
    this.end = end;
  }

  get done(): boolean {
    return this.pos >= this.end;
  }

  varint(): number {
    let result = 0;
    let shift = 0;
    for (;;) {
      if (this.pos >= this.end) throw new Error('truncated varint');
      const b = this.buf[this.pos++] as number;
      if (shift < 49) result += (b & 0x7f) * 2 ** shift;
      else if ((b & 0x7f) !== 0) throw new Error('varint too large');
      if ((b & 0x80) === 0) return result;
      shift += 7;
      if (shift > 63) throw new Error('varint too long');
    }
  }

  /** A length-delimited field's bounds (a view into the buffer, not a copy). */
  bytes(): Buffer {
    const len = this.varint();
    if (len > this.end - this.pos) throw new Error('truncated length-delimited field');
    const out = this.buf.subarray(this.pos, this.pos + len);
    this.pos += len;
    return out;
  }

  skip(wire: number): void {
    if (wire === WIRE_VARINT) this.varint();
    else if (wire === WIRE_LEN) this.bytes();
    else if (wire === WIRE_I64) this.advance(8);
    else if (wire === WIRE_I32) this.advance(4);
    else throw new Error(`unsupported wire type ${wire}`);
  }

  private advance(n: number): void {
    if (n > this.end - this.pos) throw new Error('truncated field');
    this.pos += n;
  }
}

function fields(buf: Buffer, visit: (field: number, wire: number, r: Reader) => void): void {
  const r = new Reader(buf);
  while (!r.done) {
    const key = r.varint();
    const field = Math.floor(key / 8);
    const wire = key & 7;
    if (field === 0) throw new Error('field number 0');
    visit(field, wire, r);
  }
}

/** Reads a length-delimited field, or skips a field of another wire type (unknown fields are skipped). */
function lenField(wire: number, r: Reader): Buffer | null {
  if (wire !== WIRE_LEN) {
    r.skip(wire);
    return null;
  }
  return r.bytes();
}

function decodeSvid(buf: Buffer): X509SvidMessage {
  let spiffeId = '';
  let x509Svid = Buffer.alloc(0);
  let x509SvidKey = Buffer.alloc(0);
  let bundle = Buffer.alloc(0);
  let hint = '';
  fields(buf, (field, wire, r) => {
    const v = lenField(wire, r);
    if (v === null) return;
    if (field === 1) spiffeId = v.toString('utf8');
    else if (field === 2) x509Svid = Buffer.from(v);
    else if (field === 3) x509SvidKey = Buffer.from(v);
    else if (field === 4) bundle = Buffer.from(v);
    else if (field === 5) hint = v.toString('utf8');
  });
  return { spiffeId, x509Svid, x509SvidKey, bundle, hint };
}

export function decodeX509SvidResponse(buf: Buffer): X509SvidResponseMessage {
  const svids: X509SvidMessage[] = [];
  const crl: Buffer[] = [];
  const federatedBundles = new Map<string, Buffer>();
  fields(buf, (field, wire, r) => {
    const v = lenField(wire, r);
    if (v === null) return;
    if (field === 1) svids.push(decodeSvid(v));
    else if (field === 2) crl.push(Buffer.from(v));
    else if (field === 3) {
      // A map entry is a message { key = 1; value = 2 }.
      let key = '';
      let value = Buffer.alloc(0);
      fields(v, (f, w, rr) => {
        const x = lenField(w, rr);
        if (x === null) return;
        if (f === 1) key = x.toString('utf8');
        else if (f === 2) value = Buffer.from(x);
      });
      federatedBundles.set(key, value);
    }
  });
  return { svids, crl, federatedBundles };
}

/** X509SVIDRequest has no fields: its encoding is empty. */
export function encodeX509SvidRequest(): Buffer {
  return Buffer.alloc(0);
}

/**
 * Splits concatenated DER values (certificates) into one buffer each, reading each outer
 * SEQUENCE's length (X.690 §8.1.3: short form, or long form of 1–4 length bytes).
 */
export function splitDer(buf: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let pos = 0;
  while (pos < buf.length) {
    if (buf[pos] !== 0x30) throw new Error('not a DER SEQUENCE');
    if (pos + 2 > buf.length) throw new Error('truncated DER');
    const first = buf[pos + 1] as number;
    let len: number;
    let header: number;
    if (first < 0x80) {
      len = first;
      header = 2;
    } else {
      const n = first & 0x7f;
      if (n === 0 || n > 4 || pos + 2 + n > buf.length) throw new Error('bad DER length');
      len = 0;
      for (let i = 0; i < n; i++) len = len * 256 + (buf[pos + 2 + i] as number);
      header = 2 + n;
    }
    const end = pos + header + len;
    if (end > buf.length) throw new Error('truncated DER');
    out.push(buf.subarray(pos, end));
    pos = end;
  }
  return out;
}
