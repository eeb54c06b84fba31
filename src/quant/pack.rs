//! Bit packing of small integer codes into bytes: the one implementation every
//! format here uses.
//!
//! `bits` is 1, 2, 4 or 8 (a width that divides 8). Element `i` of a run lands in
//! byte `i / (8 / bits)`. [`Order::LowFirst`] puts the lower index in the lower bits
//! (MatMulNBits, GatherBlockQuantized, ONNX int4/uint4/int2/uint2);
//! [`Order::HighFirst`] puts it in the higher bits (MatMulBnb4). A partial last
//! byte is padded with zero bits. Codes are masked to `bits`, so signed values
//! stored two's complement (`(v as u8)`) pack correctly.

/// Which end of a byte holds the element with the lower index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    LowFirst,
    HighFirst,
}

/// Bytes needed for `count` codes of `bits` each.
#[inline]
pub fn packed_len(count: usize, bits: u8) -> usize {
    (count * bits as usize).div_ceil(8)
}

/// Bit offset of slot `j` of `per` in a byte.
#[inline(always)]
const fn shift(j: usize, per: usize, bits: u8, high_first: bool) -> u32 {
    let slot = if high_first { per - 1 - j } else { j };
    (slot * bits as usize) as u32
}

#[inline(always)]
fn pack_fixed<const PER: usize, const BITS: u8, const HIGH: bool>(codes: &[u8], out: &mut [u8]) {
    let mask = ((1u16 << BITS) - 1) as u8;
    let mut chunks = codes.chunks_exact(PER);
    for (o, c) in out.iter_mut().zip(&mut chunks) {
        let mut b = 0u8;
        for (j, &v) in c.iter().enumerate() {
            b |= (v & mask) << shift(j, PER, BITS, HIGH);
        }
        *o = b;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut b = 0u8;
        for (j, &v) in rest.iter().enumerate() {
            b |= (v & mask) << shift(j, PER, BITS, HIGH);
        }
        out[codes.len() / PER] = b;
    }
}

/// Packs `codes` into `out`, which must hold exactly `packed_len(codes.len(), bits)`
/// bytes.
#[inline]
pub fn pack_ordered(codes: &[u8], bits: u8, order: Order, out: &mut [u8]) {
    debug_assert!(matches!(bits, 1 | 2 | 4 | 8), "code width {bits}");
    debug_assert_eq!(out.len(), packed_len(codes.len(), bits));
    match bits {
        8 => out.copy_from_slice(codes),
        4 => match order {
            Order::LowFirst => pack_fixed::<2, 4, false>(codes, out),
            Order::HighFirst => pack_fixed::<2, 4, true>(codes, out),
        },
        2 => match order {
            Order::LowFirst => pack_fixed::<4, 2, false>(codes, out),
            Order::HighFirst => pack_fixed::<4, 2, true>(codes, out),
        },
        1 => match order {
            Order::LowFirst => pack_fixed::<8, 1, false>(codes, out),
            Order::HighFirst => pack_fixed::<8, 1, true>(codes, out),
        },
        _ => {}
    }
}

/// Packs low bits first (ONNX and MatMulNBits order).
#[inline]
pub fn pack(codes: &[u8], bits: u8, out: &mut [u8]) {
    pack_ordered(codes, bits, Order::LowFirst, out)
}

#[inline(always)]
fn unpack_fixed<const PER: usize, const BITS: u8, const HIGH: bool>(bytes: &[u8], out: &mut [u8]) {
    let mask = ((1u16 << BITS) - 1) as u8;
    let whole = out.len() / PER;
    let mut chunks = out.chunks_exact_mut(PER);
    for (c, &b) in (&mut chunks).zip(bytes) {
        for (j, v) in c.iter_mut().enumerate() {
            *v = (b >> shift(j, PER, BITS, HIGH)) & mask;
        }
    }
    let rest = chunks.into_remainder();
    if !rest.is_empty() {
        let b = bytes[whole];
        for (j, v) in rest.iter_mut().enumerate() {
            *v = (b >> shift(j, PER, BITS, HIGH)) & mask;
        }
    }
}

/// Unpacks `out.len()` codes from `bytes` (at least `packed_len(out.len(), bits)`
/// bytes).
#[inline]
pub fn unpack_ordered(bytes: &[u8], bits: u8, order: Order, out: &mut [u8]) {
    debug_assert!(matches!(bits, 1 | 2 | 4 | 8), "code width {bits}");
    debug_assert!(bytes.len() >= packed_len(out.len(), bits));
    match bits {
        8 => out.copy_from_slice(&bytes[..out.len()]),
        4 => match order {
            Order::LowFirst => unpack_fixed::<2, 4, false>(bytes, out),
            Order::HighFirst => unpack_fixed::<2, 4, true>(bytes, out),
        },
        2 => match order {
            Order::LowFirst => unpack_fixed::<4, 2, false>(bytes, out),
            Order::HighFirst => unpack_fixed::<4, 2, true>(bytes, out),
        },
        1 => match order {
            Order::LowFirst => unpack_fixed::<8, 1, false>(bytes, out),
            Order::HighFirst => unpack_fixed::<8, 1, true>(bytes, out),
        },
        _ => {}
    }
}

/// Unpacks `count` codes stored low bits first into a new vector.
pub fn unpack(bytes: &[u8], bits: u8, count: usize) -> Vec<u8> {
    let mut out = vec![0u8; count];
    unpack_ordered(bytes, bits, Order::LowFirst, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_all_widths_and_orders() {
        for bits in [1u8, 2, 4, 8] {
            for order in [Order::LowFirst, Order::HighFirst] {
                for count in [0usize, 1, 7, 37, 64] {
                    let codes: Vec<u8> = (0..count)
                        .map(|i| ((i * 7 + 3) % (1 << bits)) as u8)
                        .collect();
                    let mut out = vec![0xAAu8; packed_len(count, bits)];
                    pack_ordered(&codes, bits, order, &mut out);
                    let mut back = vec![0u8; count];
                    unpack_ordered(&out, bits, order, &mut back);
                    assert_eq!(back, codes, "bits {bits} {order:?} count {count}");
                }
            }
        }
    }

    #[test]
    fn nibble_and_crumb_order() {
        let mut out = [0u8; 1];
        pack(&[0x3, 0xA], 4, &mut out);
        assert_eq!(out[0], 0xA3);
        pack_ordered(&[0x3, 0xA], 4, Order::HighFirst, &mut out);
        assert_eq!(out[0], 0x3A);
        pack(&[1, 2, 3, 0], 2, &mut out);
        assert_eq!(out[0], 0b00_11_10_01);
    }

    #[test]
    fn partial_byte_is_zero_padded_and_signed_values_are_masked() {
        let mut out = [0xFFu8; 2];
        pack(&[0x1, 0x2, 0x3], 4, &mut out);
        assert_eq!(out, [0x21, 0x03]);
        // -1 and -8 as int4 two's complement.
        pack(&[(-1i8) as u8, (-8i8) as u8], 4, &mut out[..1]);
        assert_eq!(out[0], 0x8F);
    }
}
