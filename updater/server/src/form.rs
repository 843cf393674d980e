//! `application/x-www-form-urlencoded` text, as the dashboard's HTML forms post it and as etcd's
//! discovery client sends its query strings and `value=` bodies. A few lines here rather than a
//! dependency: the forms have two or three short fields.

/// The fields of a form body, in order. Malformed escapes are kept as written (the engine then
/// refuses the odd value with a message naming it) rather than failing the whole form.
pub fn parse(body: &[u8]) -> Vec<(String, String)> {
    body.split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let mut parts = pair.splitn(2, |&b| b == b'=');
            let name = decode(parts.next().unwrap_or_default());
            let value = decode(parts.next().unwrap_or_default());
            (name, value)
        })
        .collect()
}

/// The first value of field `name`.
pub fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn decode(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' => match raw.get(i + 1..i + 3).and_then(hex_byte) {
                Some(byte) => {
                    out.push(byte);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_byte(two: &[u8]) -> Option<u8> {
    let decoded = kiln_contract::hex::decode(std::str::from_utf8(two).ok()?)?;
    decoded.first().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_fields() {
        let fields = parse(b"from=alpha&to=beta+2&csrf=a%2Fb%3D&empty=&bad=%zz%4");
        assert_eq!(field(&fields, "from"), Some("alpha"));
        assert_eq!(field(&fields, "to"), Some("beta 2"));
        assert_eq!(field(&fields, "csrf"), Some("a/b="));
        assert_eq!(field(&fields, "empty"), Some(""));
        assert_eq!(field(&fields, "bad"), Some("%zz%4"));
        assert_eq!(field(&fields, "missing"), None);
    }
}
