// Reads HYPERPARAMS: a flat JSON object whose number values matter. Keys
// that are not asked for, and values that are not numbers, are skipped
// (nested objects and arrays included); text that is not a JSON object is an
// error.
import { Slice } from "./wasi";

/** Why the last parse failed, when it did. */
export let jsonError: string = "";

const POW10 = memory.data<f64>([
  1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
  1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
]);

function isSpace(c: u32): bool {
  return c == 0x20 || c == 0x09 || c == 0x0a || c == 0x0d;
}

function isDigit(c: u32): bool {
  return c >= 0x30 && c <= 0x39;
}

/** A cursor over a byte string. */
class Reader {
  pos: usize = 0;

  constructor(public text: Slice) {}

  get done(): bool {
    return this.pos >= this.text.len;
  }

  peek(): u32 {
    return this.done ? 0 : this.text.at(this.pos);
  }

  skipSpace(): void {
    while (!this.done && isSpace(this.peek())) this.pos++;
  }

  /** Skips a string (the cursor on its opening quote); false when it does not end. */
  skipString(): bool {
    this.pos++;
    while (!this.done) {
      const c = this.peek();
      this.pos++;
      if (c == 0x5c) this.pos++; // backslash: skip the escaped byte
      else if (c == 0x22) return true;
    }
    return false;
  }

  /** A JSON number at the cursor, or NaN when there is none. */
  number(): f64 {
    const from = this.pos;
    let negative = false;
    if (this.peek() == 0x2d) {
      negative = true;
      this.pos++;
    }
    let mantissa: f64 = 0;
    let exponent: i32 = 0;
    let digits = 0;
    while (isDigit(this.peek())) {
      mantissa = mantissa * 10 + <f64>(this.peek() - 0x30);
      this.pos++;
      digits++;
    }
    if (this.peek() == 0x2e) {
      this.pos++;
      while (isDigit(this.peek())) {
        mantissa = mantissa * 10 + <f64>(this.peek() - 0x30);
        exponent--;
        this.pos++;
        digits++;
      }
    }
    if (digits == 0) {
      this.pos = from;
      return NaN;
    }
    if (this.peek() == 0x65 || this.peek() == 0x45) {
      this.pos++;
      let sign: i32 = 1;
      if (this.peek() == 0x2b || this.peek() == 0x2d) {
        if (this.peek() == 0x2d) sign = -1;
        this.pos++;
      }
      let e: i32 = 0;
      if (!isDigit(this.peek())) return NaN;
      while (isDigit(this.peek())) {
        if (e < 100000) e = e * 10 + <i32>(this.peek() - 0x30);
        this.pos++;
      }
      exponent += sign * e;
    }
    // correctly rounded for up to 15 significant digits and |exponent| <= 22
    // (0.5, 1e-3, 32), close enough beyond (steps of 1e22)
    let v = mantissa;
    while (exponent > 22 && v < Infinity) {
      v *= 1e22;
      exponent -= 22;
    }
    while (exponent < -22 && v > 0) {
      v /= 1e22;
      exponent += 22;
    }
    if (exponent < 0) v /= load<f64>(POW10 + (<usize>-exponent << 3));
    else if (exponent > 0) v *= load<f64>(POW10 + (<usize>exponent << 3));
    return negative ? -v : v;
  }

  /** Skips any JSON value; false on malformed text. */
  skipValue(): bool {
    const c = this.peek();
    if (c == 0x22) return this.skipString();
    if (c == 0x7b || c == 0x5b) {
      // an object or array: skip to its matching close, strings included
      let depth = 0;
      while (!this.done) {
        const d = this.peek();
        if (d == 0x22) {
          if (!this.skipString()) return false;
          continue;
        }
        this.pos++;
        if (d == 0x7b || d == 0x5b) depth++;
        else if (d == 0x7d || d == 0x5d) {
          if (--depth == 0) return true;
        }
      }
      return false;
    }
    if (c == 0x2d || isDigit(c)) return !isNaN(this.number());
    // true, false, null
    const from = this.pos;
    while (!this.done && this.peek() >= 0x61 && this.peek() <= 0x7a) this.pos++;
    return this.pos > from;
  }
}

/** The keys asked for and the numbers found. */
export class Params {
  names: string[] = [];
  values: f64[] = [];

  /** Asks for `name` (ASCII); its value starts as NaN (not given). */
  want(name: string): i32 {
    this.names.push(name);
    this.values.push(NaN);
    return this.names.length - 1;
  }

  get(i: i32): f64 {
    return this.values[i];
  }

  private match(text: Slice, from: usize, to: usize): i32 {
    for (let k = 0; k < this.names.length; k++) {
      const name = this.names[k];
      if (<usize>name.length != to - from) continue;
      let i: usize = 0;
      while (i < to - from && text.at(from + i) == <u32>name.charCodeAt(<i32>i)) i++;
      if (i == to - from) return k;
    }
    return -1;
  }

  /** Fills in the numbers of the keys asked for; false (and jsonError) when `text` is not a JSON object. */
  parse(text: Slice): bool {
    const r = new Reader(text);
    r.skipSpace();
    if (r.peek() != 0x7b) return this.error("it is not a JSON object");
    r.pos++;
    r.skipSpace();
    if (r.peek() == 0x7d) return this.end(r);
    while (true) {
      r.skipSpace();
      if (r.peek() != 0x22) return this.error("a key is not a string");
      const keyFrom = r.pos + 1;
      if (!r.skipString()) return this.error("a string does not end");
      const key = this.match(text, keyFrom, r.pos - 1);
      r.skipSpace();
      if (r.peek() != 0x3a) return this.error("':' missing after a key");
      r.pos++;
      r.skipSpace();
      const c = r.peek();
      if (key >= 0 && (c == 0x2d || isDigit(c))) {
        const v = r.number();
        if (isNaN(v)) return this.error("a number is malformed");
        this.values[key] = v;
      } else if (!r.skipValue()) {
        return this.error("a value is malformed");
      }
      r.skipSpace();
      if (r.peek() == 0x2c) {
        r.pos++;
        continue;
      }
      if (r.peek() == 0x7d) return this.end(r);
      return this.error("',' or '}' missing after a value");
    }
  }

  private end(r: Reader): bool {
    r.pos++;
    r.skipSpace();
    return r.done ? true : this.error("text follows the object");
  }

  private error(why: string): bool {
    jsonError = why;
    return false;
  }
}
