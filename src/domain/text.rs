//! Text fields that can only hold valid values: usernames, emails, passwords, names,
//! references and metadata. Each `parse` says what was expected.

use caseless::Caseless;
use serde_json::{Map, Value};
use unicode_normalization::UnicodeNormalization;

pub const USERNAME_CHARS_MIN: usize = 3;
pub const USERNAME_CHARS_MAX: usize = 150;
pub const EMAIL_BYTES_MAX: usize = 254;
pub const PASSWORD_BYTES_MIN: usize = 8;
pub const PASSWORD_BYTES_MAX: usize = 1024;
pub const NAME_CHARS_MAX: usize = 150;
pub const REFERENCE_CHARS_MAX: usize = 255;
pub const METADATA_BYTES_MAX: usize = 4096;
// `entries.reference` and `withdrawals.reference` say `CHECK (length(reference) BETWEEN 1 AND
// 255)` (tested in `ledger::invariants`), and an operator's reference is its prefix plus a
// client's: the prefix must leave room for one.
const _: () = assert!(REFERENCE_CHARS_MAX == 255);
const _: () = assert!(OPERATOR_REFERENCE_PREFIX.len() < REFERENCE_CHARS_MAX);
// Metadata is stored once per entry and hashed on every append: a few KiB at most.
const _: () = assert!(METADATA_BYTES_MAX <= 64 * 1024);

/// 3–150 letters, digits and `@.+-_`, held in Unicode NFKC form; compared by `username_key`.
///
/// The length and the characters are checked on the NFKC form, because that is what is stored
/// and shown: `ｂｏｂ` (fullwidth) becomes `bob`, and `x½y` becomes `x1⁄2y`, which is refused
/// for its fraction slash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    pub fn parse(s: &str) -> Result<Username, String> {
        let s: String = s.nfkc().collect();
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
        Ok(Username(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key uniqueness, login, `to_username` and the login throttle compare.
    pub fn key(&self) -> String {
        username_key(&self.0)
    }
}

/// The canonical form two usernames are compared in: Unicode's compatibility caseless match
/// (NFKD of full case folding, twice, as the Unicode Standard's definition D146 prescribes, so
/// that `ǰ`, `ΐ` and the like fold the same however they are composed), recomposed as NFC to
/// keep keys short. `ＡＬＩＣＥ`, `𝐚𝐥𝐢𝐜𝐞` and `ALICE` all give `alice`; `straße` and
/// `STRASSE` give `strasse`. Any text has a key, so a login with an invalid name still costs
/// the same as one with an unknown name.
pub fn username_key(s: &str) -> String {
    s.nfd()
        .default_case_fold()
        .nfkd()
        .default_case_fold()
        .nfkd()
        .nfc()
        .collect()
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

/// The reference of a hold's capture entries: `hold:<hold id>`, reserved like `admin:`, so a
/// capture never collides with the payer's own references.
pub const HOLD_REFERENCE_PREFIX: &str = "hold:";

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
        if s.starts_with(HOLD_REFERENCE_PREFIX) {
            return Err(format!(
                "references beginning with {HOLD_REFERENCE_PREFIX:?} are reserved for the captures of holds"
            ));
        }
        Ok(Reference(s.to_string()))
    }

    /// The reference of the entries that capture the hold `hold_id` (a UUID: always short).
    pub fn for_hold(hold_id: &str) -> Reference {
        Reference(format!("{HOLD_REFERENCE_PREFIX}{hold_id}"))
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
    fn usernames_are_stored_in_nfkc_and_compared_after_case_folding() {
        // Fullwidth and mathematical letters are stored as the letters they stand for, and
        // every spelling of one name has one key, including full (not only simple) folding.
        assert_eq!(Username::parse("ａｌｉｃｅ").unwrap().as_str(), "alice");
        assert_eq!(Username::parse("𝐚𝐥𝐢𝐜𝐞").unwrap().as_str(), "alice");
        for same in ["alice", "ALICE", "ａｌｉｃｅ", "𝐚𝐥𝐢𝐜𝐞", "Ａｌｉｃｅ"]
        {
            assert_eq!(Username::parse(same).unwrap().key(), "alice", "{same}");
            assert_eq!(username_key(same), "alice", "{same}");
        }
        assert_eq!(Username::parse("straße").unwrap().as_str(), "straße");
        assert_eq!(
            Username::parse("straße").unwrap().key(),
            Username::parse("STRASSE").unwrap().key()
        );
        // Composed and decomposed accents are one name.
        assert_eq!(
            Username::parse("Jos\u{e9}").unwrap().as_str(),
            Username::parse("Jose\u{301}").unwrap().as_str()
        );
        // A key is its own key, so comparing keys is stable.
        for s in ["straße", "ǰane", "ΐota", "ﬁle", "Å-ring"] {
            let k = username_key(s);
            assert_eq!(username_key(&k), k, "{s}");
        }
        // Validity and length are judged on the NFKC form.
        let err = Username::parse("x½y").unwrap_err();
        assert!(err.contains('⁄'), "{err}");
        assert!(
            Username::parse("ａｂ").is_err(),
            "two characters after NFKC"
        );
        assert!(Username::parse("ﬀ").is_err(), "ff is two characters");
        assert!(
            Username::parse("㍿x").is_ok(),
            "㍿ is the four letters 株式会社"
        );
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
