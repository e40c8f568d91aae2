/**
 * A growable Int32Array: collecting millions of token ids in a plain number[] costs ~4x the
 * memory and a copy, so encoders append here instead.
 */
export class TokenBuffer {
  private buf: Int32Array;
  private n = 0;

  constructor(initialCapacity = 1024) {
    this.buf = new Int32Array(Math.max(16, initialCapacity));
  }

  get length(): number {
    return this.n;
  }

  private reserve(extra: number): void {
    if (this.n + extra <= this.buf.length) return;
    let cap = this.buf.length * 2;
    while (cap < this.n + extra) cap *= 2;
    const next = new Int32Array(cap);
    next.set(this.buf.subarray(0, this.n));
    this.buf = next;
  }

  push(id: number): void {
    if (this.n === this.buf.length) this.reserve(1);
    this.buf[this.n++] = id;
  }

  pushAll(ids: Int32Array): void {
    this.reserve(ids.length);
    this.buf.set(ids, this.n);
    this.n += ids.length;
  }

  /** A view of the ids appended so far (invalidated by further pushes). */
  view(): Int32Array {
    return this.buf.subarray(0, this.n);
  }
}
