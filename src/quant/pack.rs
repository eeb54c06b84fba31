//! Bit packing shared by every format: `bits` ∈ {2, 4, 8}, lower index in the
//! lower bits of a byte (MatMulNBits, GatherBlockQuantized, ONNX int4).

/// Packs codes (each < 2^bits) into bytes, low bits first; the last byte is
/// zero-padded.
pub fn pack(codes: &[u8], bits: u8, out: &mut [u8]) {
    let per = 8 / bits as usize;
    for (i, chunk) in codes.chunks(per).enumerate() {
        let mut b = 0u8;
        for (j, &c) in chunk.iter().enumerate() {
            b |= c << (j * bits as usize);
        }
        out[i] = b;
    }
}

/// Unpacks `count` codes.
pub fn unpack(bytes: &[u8], bits: u8, count: usize) -> Vec<u8> {
    let per = 8 / bits as usize;
    let mask = ((1u16 << bits) - 1) as u8;
    (0..count)
        .map(|i| (bytes[i / per] >> ((i % per) * bits as usize)) & mask)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_all_widths() {
        for bits in [2u8, 4, 8] {
            let codes: Vec<u8> = (0..37).map(|i| (i * 7 % (1 << bits)) as u8).collect();
            let mut out = vec![0u8; (codes.len() * bits as usize).div_ceil(8)];
            pack(&codes, bits, &mut out);
            assert_eq!(unpack(&out, bits, codes.len()), codes);
        }
    }

    #[test]
    fn low_nibble_first() {
        let mut out = [0u8; 1];
        pack(&[0x3, 0xA], 4, &mut out);
        assert_eq!(out[0], 0xA3);
    }
}
