//! A result in pieces: a shuffle task's output, one Arrow IPC stream per
//! partition of the stage that reads it, kept as one buffer so the runtime
//! stores, spills and counts it like any other result.
//!
//! Layout: `DSKP`, the piece count (u32, little-endian), each piece's length
//! (u64, little-endian), then the pieces one after another. An empty piece
//! is zero bytes.

use bytes::{BufMut, Bytes, BytesMut};

const MAGIC: &[u8; 4] = b"DSKP";

/// Packs pieces into one buffer.
pub fn pack(pieces: &[Bytes]) -> Bytes {
    let header = 8 + 8 * pieces.len();
    let total: usize = pieces.iter().map(Bytes::len).sum();
    let mut out = BytesMut::with_capacity(header + total);
    out.put_slice(MAGIC);
    out.put_u32_le(pieces.len() as u32);
    for p in pieces {
        out.put_u64_le(p.len() as u64);
    }
    for p in pieces {
        out.put_slice(p);
    }
    out.freeze()
}

/// How many pieces `buf` holds.
pub fn count(buf: &Bytes) -> Result<usize, String> {
    header(buf).map(|(n, _)| n)
}

/// Piece `i` of `buf`, without copying.
pub fn piece(buf: &Bytes, i: usize) -> Result<Bytes, String> {
    let (n, start) = header(buf)?;
    if i >= n {
        return Err(format!("piece {i} asked of a result with {n} pieces"));
    }
    let mut offset = start;
    for j in 0..n {
        let at = 8 + 8 * j;
        let len = u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes")) as usize;
        if j == i {
            return offset
                .checked_add(len)
                .filter(|&end| end <= buf.len())
                .map(|end| buf.slice(offset..end))
                .ok_or_else(|| format!("piece {i} runs past the end of the result"));
        }
        offset = offset.saturating_add(len);
    }
    unreachable!("i < n")
}

fn header(buf: &Bytes) -> Result<(usize, usize), String> {
    if buf.len() < 8 || &buf[..4] != MAGIC {
        return Err("not a result in pieces".into());
    }
    let n = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes")) as usize;
    let start = 8usize.saturating_add(n.saturating_mul(8));
    if buf.len() < start {
        return Err(format!("a result of {n} pieces is cut short"));
    }
    Ok((n, start))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the fuzz target `pieces_of_a_result`: a length near the
    /// top of the address space overflowed the piece's end.
    #[test]
    fn a_piece_length_past_any_buffer_is_an_error() {
        let mut buf = pack(&[Bytes::from_static(b"ab"), Bytes::from_static(b"c")]).to_vec();
        buf[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        let buf = Bytes::from(buf);
        assert_eq!(count(&buf), Ok(2));
        let e = piece(&buf, 0).unwrap_err();
        assert!(e.contains("piece 0 runs past the end"), "{e}");
        assert!(piece(&buf, 1).is_err());
    }

    #[test]
    fn pieces_round_trip() {
        let parts = vec![
            Bytes::from_static(b"abc"),
            Bytes::new(),
            Bytes::from_static(b"defgh"),
        ];
        let packed = pack(&parts);
        assert_eq!(count(&packed).unwrap(), 3);
        for (i, p) in parts.iter().enumerate() {
            assert_eq!(&piece(&packed, i).unwrap(), p);
        }
        assert!(piece(&packed, 3).unwrap_err().contains("3 pieces"));
    }

    #[test]
    fn damaged_buffers_are_errors() {
        assert!(count(&Bytes::from_static(b"nope")).is_err());
        let packed = pack(&[Bytes::from_static(b"abcdef")]);
        let cut = packed.slice(..packed.len() - 2);
        assert!(piece(&cut, 0).unwrap_err().contains("past the end"));
        assert!(count(&packed.slice(..10)).is_err());
    }
}
