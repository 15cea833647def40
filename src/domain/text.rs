//! Text fields that can only hold valid values: usernames, emails, passwords, names,
//! references and metadata. Each `parse` says what was expected.

use serde_json::{Map, Value};

pub const USERNAME_CHARS_MIN: usize = 3;
pub const USERNAME_CHARS_MAX: usize = 150;
pub const EMAIL_BYTES_MAX: usize = 254;
pub const PASSWORD_BYTES_MIN: usize = 8;
pub const PASSWORD_BYTES_MAX: usize = 1024;
pub const NAME_CHARS_MAX: usize = 150;
pub const REFERENCE_CHARS_MAX: usize = 255;
pub const METADATA_BYTES_MAX: usize = 4096;

/// 3–150 letters, digits and `@.+-_`; compared case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    pub fn parse(s: &str) -> Result<Username, String> {
        let chars = s.chars().count();
        if !(USERNAME_CHARS_MIN..=USERNAME_CHARS_MAX).contains(&chars) {
            return Err(format!(
                "must be {USERNAME_CHARS_MIN} to {USERNAME_CHARS_MAX} characters, got {chars}"
            ));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_alphanumeric() || "@.+-_".contains(*c)))
        {
            return Err(format!(
                "may hold only letters, digits and @.+-_, found {c:?}"
            ));
        }
        Ok(Username(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key uniqueness is checked on.
    pub fn key(&self) -> String {
        self.0.to_lowercase()
    }
}

/// An email address of the form `local@domain.tld`, at most 254 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(s: &str) -> Result<Email, String> {
        let err = || format!("{:?} is not a valid email address", truncate(s, 60));
        if s.len() > EMAIL_BYTES_MAX {
            return Err(format!("must be at most {EMAIL_BYTES_MAX} bytes"));
        }
        let (local, domain) = s.rsplit_once('@').ok_or_else(err)?;
        let domain_ok = domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..");
        let clean = !s.chars().any(|c| c.is_whitespace() || c.is_control());
        if local.is_empty() || local.contains('@') || !domain_ok || !clean {
            return Err(err());
        }
        Ok(Email(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn key(&self) -> String {
        self.0.to_lowercase()
    }
}

/// A new password: 8–1024 bytes. Never printed.
pub struct Password(String);

impl Password {
    pub fn parse(s: &str) -> Result<Password, String> {
        if !(PASSWORD_BYTES_MIN..=PASSWORD_BYTES_MAX).contains(&s.len()) {
            return Err(format!(
                "must be {PASSWORD_BYTES_MIN} to {PASSWORD_BYTES_MAX} bytes, got {}",
                s.len()
            ));
        }
        Ok(Password(s.to_string()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

/// A first or last name: at most 150 characters, no control characters.
pub fn parse_name(s: &str) -> Result<String, String> {
    let chars = s.chars().count();
    if chars > NAME_CHARS_MAX {
        return Err(format!(
            "must be at most {NAME_CHARS_MAX} characters, got {chars}"
        ));
    }
    if s.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(s.to_string())
}

/// Operator credits store their reference under this prefix, so a user's own deposit
/// references and an operator's credit references can never replay or block each other.
/// Clients may not send references that begin with it.
pub const OPERATOR_REFERENCE_PREFIX: &str = "admin:";

/// A client's idempotency reference: 1–255 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference(String);

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, String> {
        let chars = s.chars().count();
        if !(1..=REFERENCE_CHARS_MAX).contains(&chars) {
            return Err(format!(
                "must be 1 to {REFERENCE_CHARS_MAX} characters, got {chars}"
            ));
        }
        if s.chars().any(char::is_control) {
            return Err("must not contain control characters".into());
        }
        if s.starts_with(OPERATOR_REFERENCE_PREFIX) {
            return Err(format!(
                "references beginning with {OPERATOR_REFERENCE_PREFIX:?} are reserved for operator credits"
            ));
        }
        Ok(Reference(s.to_string()))
    }

    /// The reference an operator credit is stored under.
    pub fn for_operator(&self) -> Result<Reference, String> {
        let prefixed = format!("{OPERATOR_REFERENCE_PREFIX}{}", self.0);
        let chars = prefixed.chars().count();
        if chars > REFERENCE_CHARS_MAX {
            return Err(format!(
                "must be at most {} characters for an operator credit, got {}",
                REFERENCE_CHARS_MAX - OPERATOR_REFERENCE_PREFIX.len(),
                self.0.chars().count()
            ));
        }
        Ok(Reference(prefixed))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A JSON object of at most 4 KiB, kept in canonical form (keys sorted) so that two requests
/// with the same metadata compare equal as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata(String);

impl Metadata {
    pub fn parse(v: Option<&Value>) -> Result<Metadata, String> {
        match v {
            None | Some(Value::Null) => Ok(Metadata::empty()),
            Some(Value::Object(map)) => {
                // serde_json's Map is a BTreeMap (no `preserve_order`): serialising sorts keys.
                let text =
                    serde_json::to_string(map).map_err(|_| "must be a JSON object".to_string())?;
                if text.len() > METADATA_BYTES_MAX {
                    return Err(format!(
                        "must be at most {METADATA_BYTES_MAX} bytes as JSON, got {}",
                        text.len()
                    ));
                }
                Ok(Metadata(text))
            }
            Some(_) => Err("must be a JSON object".into()),
        }
    }

    pub fn empty() -> Metadata {
        Metadata("{}".into())
    }

    /// For metadata read back from the database, which only ever stores parsed metadata.
    pub fn from_stored(s: String) -> Metadata {
        Metadata(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn to_value(&self) -> Value {
        serde_json::from_str(&self.0).unwrap_or_else(|_| Value::Object(Map::new()))
    }
}

fn truncate(s: &str, chars: usize) -> String {
    s.chars().take(chars).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn username_bounds() {
        assert!(Username::parse("abc").is_ok());
        assert!(Username::parse("ab").is_err());
        assert!(Username::parse(&"a".repeat(150)).is_ok());
        assert!(Username::parse(&"a".repeat(151)).is_err());
        assert!(Username::parse("al.ice+1@x-y_z").is_ok());
        assert!(Username::parse("al ice").is_err());
        assert!(Username::parse("al/ice").is_err());
        assert_eq!(Username::parse("Alice").unwrap().key(), "alice");
    }

    #[test]
    fn email_shape() {
        assert!(Email::parse("a@b.co").is_ok());
        for bad in [
            "", "a", "a@b", "@b.co", "a@.co", "a@b.", "a b@c.de", "a@b..c",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn password_bounds_in_bytes() {
        assert!(Password::parse("1234567").is_err());
        assert!(Password::parse("12345678").is_ok());
        assert!(Password::parse(&"x".repeat(1024)).is_ok());
        assert!(Password::parse(&"x".repeat(1025)).is_err());
        assert_eq!(
            format!("{:?}", Password::parse("secret-pass").unwrap()),
            "Password(***)"
        );
    }

    #[test]
    fn reference_bounds() {
        assert!(Reference::parse("").is_err());
        assert!(Reference::parse("r").is_ok());
        assert!(Reference::parse(&"r".repeat(255)).is_ok());
        assert!(Reference::parse(&"r".repeat(256)).is_err());
        assert!(Reference::parse("a\u{0}b").is_err());
        assert!(
            Reference::parse("admin:x").is_err(),
            "reserved for operator credits"
        );
        let r = Reference::parse("goodwill-7")
            .unwrap()
            .for_operator()
            .unwrap();
        assert_eq!(r.as_str(), "admin:goodwill-7");
        assert!(Reference::parse(&"r".repeat(250))
            .unwrap()
            .for_operator()
            .is_err());
    }

    #[test]
    fn metadata_is_canonical_and_bounded() {
        let a = Metadata::parse(Some(&json!({"b": 1, "a": [true]}))).unwrap();
        let b = Metadata::parse(Some(&json!({"a": [true], "b": 1}))).unwrap();
        assert_eq!(a, b);
        assert_eq!(Metadata::parse(None).unwrap().as_str(), "{}");
        assert!(Metadata::parse(Some(&json!([1]))).is_err());
        assert!(Metadata::parse(Some(&json!({"k": "x".repeat(4096)}))).is_err());
    }
}
