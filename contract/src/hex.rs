//! Lower-case hexadecimal, as every digest Kiln writes or reads is spelled: `SHA256SUMS`, the
//! payload manifest, Omaha's `hash_sha256`, the verity root hash, `state.json`, the server's store.

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Lower-case hex of `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// An Ethernet address as QEMU, networkd and flannel's `VtepMAC` write it: six lower-case hex
/// pairs joined by colons, `52:54:00:77:00:03`.
pub fn mac(bytes: &[u8; 6]) -> String {
    bytes
        .iter()
        .map(|b| encode(&[*b]))
        .collect::<Vec<_>>()
        .join(":")
}

/// The bytes of hex text (either case); `None` for an odd length or anything but hex digits.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    let digits = text.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

/// A SHA-256 digest: exactly 64 hex digits (either case), nothing around them.
pub fn decode_digest(text: &str) -> Option<[u8; 32]> {
    decode(text)?.try_into().ok()
}

fn nibble(digit: u8) -> Option<u8> {
    char::from(digit)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_what_is_not_hex() {
        let bytes = [0x00, 0x0f, 0xa5, 0xff];
        assert_eq!(encode(&bytes), "000fa5ff");
        assert_eq!(mac(&[0x52, 0x54, 0, 0x77, 0x0a, 0xff]), "52:54:00:77:0a:ff");
        assert_eq!(decode("000fA5ff").unwrap(), bytes);
        assert_eq!(decode("").unwrap(), Vec::<u8>::new());
        // Odd length, a sign (which `u8::from_str_radix` would take), spaces, non-ASCII.
        for bad in ["abc", "+f", "-1", " 0", "0g", "é0"] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn digests_are_exactly_32_bytes() {
        let hex = "ab".repeat(32);
        assert_eq!(decode_digest(&hex), Some([0xab; 32]));
        assert_eq!(decode_digest(&hex[2..]), None);
        assert_eq!(decode_digest(&format!("{hex}00")), None);
        assert_eq!(decode_digest(&format!(" {hex}")), None);
    }
}
