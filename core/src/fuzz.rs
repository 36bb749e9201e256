//! Inputs for the fuzz targets of the crates whose decoders face the
//! network. Random bytes rarely get past a decoder's first check; a valid
//! example bent by a few edits reaches its depths. A target takes an
//! [`Input`] (which example, which edits) from the fuzzing engine and
//! decodes [`Input::bytes`]; its examples are its committed corpus.

/// One edit of an example: where (wrapping around its length), what (see
/// [`Input::bytes`]) and which byte.
pub type Edit = (u16, u8, u8);

/// The engine's choice of example and edits.
pub type Input = (u8, Vec<Edit>);

/// The most edits applied to one example: a few keep most of its shape.
pub const MAX_EDITS: usize = 4;

/// The bytes of `input`: the chosen example (wrapping around `examples`)
/// with its first edits applied in turn, 1 to [`MAX_EDITS`] of them as the
/// choice's top bits say. An edit's kind, modulo 6: 0 overwrites
/// a byte, 1 inserts one, 2 removes one, 3 doubles the 16 bytes from there,
/// 4 flips one bit, 5 puts a boundary value (0, 0x7f, 0x80 or 0xff) there.
pub fn bytes(examples: &[&[u8]], input: &Input) -> Vec<u8> {
    let (pick, edits) = input;
    let mut out = match examples {
        [] => Vec::new(),
        _ => examples[usize::from(*pick) % examples.len()].to_vec(),
    };
    let n = 1 + usize::from(*pick >> 6) % MAX_EDITS;
    for &(at, kind, byte) in edits.iter().take(n) {
        let at = if out.is_empty() {
            0
        } else {
            usize::from(at) % out.len()
        };
        match kind % 6 {
            0 if !out.is_empty() => out[at] = byte,
            1 => out.insert(at, byte),
            2 if !out.is_empty() => {
                out.remove(at);
            }
            3 => {
                let run = out[at..(at + 16).min(out.len())].to_vec();
                out.splice(at..at, run);
            }
            4 if !out.is_empty() => out[at] ^= 1 << (byte % 8),
            5 if !out.is_empty() => out[at] = [0, 0x7f, 0x80, 0xff][usize::from(byte % 4)],
            _ => out.push(byte),
        }
    }
    out
}

/// How many inputs a bounded run of each target tries:
/// `DASKRS_FUZZ_INPUTS`, else `default`.
pub fn inputs(default: usize) -> usize {
    std::env::var("DASKRS_FUZZ_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_apply_in_turn_to_the_chosen_example() {
        let examples: [&[u8]; 2] = [b"abc", b"xyz"];
        assert_eq!(bytes(&examples, &(1, vec![])), b"xyz");
        assert_eq!(bytes(&examples, &(2, vec![(1, 0, b'Q')])), b"aQc");
        assert_eq!(
            bytes(&examples, &(64, vec![(4, 1, b'-'), (0, 2, 0)])),
            b"-bc"
        );
        // The top bits of the choice say how many edits apply.
        assert_eq!(
            bytes(&examples, &(0, vec![(4, 1, b'-'), (0, 2, 0)])),
            b"a-bc"
        );
        assert_eq!(bytes(&examples, &(0, vec![(1, 3, 0)])), b"abcbc");
        assert_eq!(bytes(&examples, &(0, vec![(0, 4, 0)])), b"`bc");
        assert_eq!(bytes(&examples, &(0, vec![(2, 5, 3)])), b"ab\xff");
        assert_eq!(bytes(&[], &(0xc7, vec![(9, 2, 1), (3, 0, 5)])), [5]);
    }
}
