//! A strict, bounded reader of `application/x-www-form-urlencoded` bodies (what an HTML form
//! posts). Strict: a malformed escape, text that is not UTF-8, a NUL character or a repeated
//! field is refused rather than guessed at, and so is a body with too many fields or too long
//! a name or value (the body itself is already bounded by `--request-body-bytes-max`).

/// Fields in one form at most; the largest console form has fewer than ten.
pub const FORM_FIELDS_MAX: usize = 32;
/// Bytes of a field's name at most.
pub const FORM_NAME_BYTES_MAX: usize = 64;
/// Bytes of a field's value at most, decoded (a reason of 500 characters is at most 2,000).
pub const FORM_VALUE_BYTES_MAX: usize = 8 * 1024;

/// A posted form's fields, in order, each name once.
#[derive(Debug, Default, Clone)]
pub struct Form {
    fields: Vec<(String, String)>,
}

impl Form {
    /// Decodes a body; the error says what is wrong with it.
    pub fn parse(body: &[u8]) -> Result<Form, String> {
        let mut fields: Vec<(String, String)> = Vec::new();
        if body.is_empty() {
            return Ok(Form { fields });
        }
        for pair in body.split(|b| *b == b'&') {
            if pair.is_empty() {
                continue;
            }
            if fields.len() == FORM_FIELDS_MAX {
                return Err(format!("the form has more than {FORM_FIELDS_MAX} fields"));
            }
            let (name, value) = match pair.iter().position(|b| *b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &[][..]),
            };
            let name = decode(name, FORM_NAME_BYTES_MAX)?;
            let value = decode(value, FORM_VALUE_BYTES_MAX)?;
            if name.is_empty() {
                return Err("the form has a field without a name".into());
            }
            if fields.iter().any(|(n, _)| *n == name) {
                return Err(format!("the form repeats the field {name:?}"));
            }
            fields.push((name, value));
        }
        Ok(Form { fields })
    }

    /// A field's value, if sent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A field's value with surrounding white space removed; absent when empty.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.get(name).map(str::trim).filter(|v| !v.is_empty())
    }

    pub fn fields(&self) -> &[(String, String)] {
        &self.fields
    }
}

/// Percent-decodes one name or value (`+` is a space), refusing what a browser never sends.
fn decode(raw: &[u8], bytes_max: usize) -> Result<String, String> {
    let mut out = Vec::with_capacity(raw.len().min(bytes_max));
    let mut i = 0;
    while i < raw.len() {
        let b = match raw[i] {
            b'+' => b' ',
            b'%' => {
                let hex = raw
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or("the form holds a malformed %-escape")?;
                i += 2;
                hex
            }
            b => b,
        };
        i += 1;
        if out.len() == bytes_max {
            return Err(format!(
                "a field of the form is longer than {bytes_max} bytes"
            ));
        }
        out.push(b);
    }
    let text = String::from_utf8(out).map_err(|_| "the form is not UTF-8 text")?;
    if text.contains('\0') {
        return Err("the form holds a NUL character".into());
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_what_browsers_send_and_refuses_the_rest() {
        let f =
            Form::parse(b"amount=12.50&to_username=bob&note=a+b%26c%3D%E2%82%AC&empty=").unwrap();
        assert_eq!(f.get("amount"), Some("12.50"));
        assert_eq!(f.get("note"), Some("a b&c=\u{20ac}"));
        assert_eq!(f.get("empty"), Some(""));
        assert_eq!(f.text("empty"), None);
        assert_eq!(f.get("missing"), None);
        for bad in [
            &b"a=%zz"[..],
            b"a=%4",
            b"a=1&a=2",
            b"=x",
            b"a=%00",
            b"a=%ff%fe",
        ] {
            assert!(
                Form::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let many: Vec<String> = (0..=FORM_FIELDS_MAX).map(|i| format!("f{i}=1")).collect();
        assert!(Form::parse(many.join("&").as_bytes()).is_err());
        let long = format!("a={}", "x".repeat(FORM_VALUE_BYTES_MAX + 1));
        assert!(Form::parse(long.as_bytes()).is_err());
        let fits = format!("a={}", "x".repeat(FORM_VALUE_BYTES_MAX));
        assert!(Form::parse(fits.as_bytes()).is_ok());
    }
}
