//! The orientation tag (0x0112) of an EXIF block, nothing else.

/// Reads the orientation from the TIFF structure after `Exif\0\0`; `None`
/// when absent, malformed or outside 1..=8.
pub(crate) fn orientation(tiff: &[u8]) -> Option<u8> {
    let big_endian = match tiff.get(0..4)? {
        [b'M', b'M', 0, 42] => true,
        [b'I', b'I', 42, 0] => false,
        _ => return None,
    };
    let u16_at = |at: usize| -> Option<u16> {
        let b = tiff.get(at..at + 2)?;
        Some(if big_endian { u16::from_be_bytes([b[0], b[1]]) } else { u16::from_le_bytes([b[0], b[1]]) })
    };
    let u32_at = |at: usize| -> Option<u32> {
        let b = tiff.get(at..at + 4)?;
        let b = [b[0], b[1], b[2], b[3]];
        Some(if big_endian { u32::from_be_bytes(b) } else { u32::from_le_bytes(b) })
    };
    let ifd0 = u32_at(4)? as usize;
    let entries = u16_at(ifd0)? as usize;
    for i in 0..entries {
        let entry = ifd0 + 2 + 12 * i;
        if u16_at(entry)? == 0x0112 {
            // Type SHORT (3), count 1: the value sits in the first two bytes of the field.
            if u16_at(entry + 2)? != 3 {
                return None;
            }
            let value = u16_at(entry + 8)?;
            return (1..=8).contains(&value).then_some(value as u8);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::orientation;

    type Writers = (fn(u16) -> [u8; 2], fn(u32) -> [u8; 4]);

    fn tiff(big_endian: bool, value: u16, kind: u16) -> Vec<u8> {
        let mut t = Vec::new();
        let (w16, w32): Writers = if big_endian {
            (u16::to_be_bytes, u32::to_be_bytes)
        } else {
            (u16::to_le_bytes, u32::to_le_bytes)
        };
        t.extend_from_slice(if big_endian { b"MM\0*" } else { b"II*\0" });
        t.extend_from_slice(&w32(8));
        t.extend_from_slice(&w16(2));
        // An unrelated tag first (ImageWidth, LONG), then the orientation.
        t.extend_from_slice(&w16(0x0100));
        t.extend_from_slice(&w16(4));
        t.extend_from_slice(&w32(1));
        t.extend_from_slice(&w32(640));
        t.extend_from_slice(&w16(0x0112));
        t.extend_from_slice(&w16(kind));
        t.extend_from_slice(&w32(1));
        t.extend_from_slice(&w16(value));
        t.extend_from_slice(&[0, 0]);
        t.extend_from_slice(&w32(0));
        t
    }

    #[test]
    fn reads_both_byte_orders_and_refuses_nonsense() {
        for value in 1..=8 {
            assert_eq!(orientation(&tiff(true, value, 3)), Some(value as u8));
            assert_eq!(orientation(&tiff(false, value, 3)), Some(value as u8));
        }
        assert_eq!(orientation(&tiff(false, 9, 3)), None);
        assert_eq!(orientation(&tiff(false, 6, 4)), None);
        let full = tiff(true, 6, 3);
        for cut in 0..full.len() - 6 {
            assert_eq!(orientation(&full[..cut]), None, "cut at {cut}");
        }
        assert_eq!(orientation(b"XX*\0\0\0\0\x08"), None);
    }
}
