//! Email addresses in the configuration, checked with lettre's own parsers: delivery
//! (`channels::email`) parses every address as a `lettre::message::Mailbox`, so an
//! address that loads is one lettre will send to, not one that fails at the first alert.

use lettre::message::Mailbox;
use lettre::Address;

use super::validator::Validator;

/// The form an address setting takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressForm {
    /// A bare address, `alice@example.com`: a user's `email`, a source's `to` and `cc`.
    Bare,
    /// An address with an optional display name, `apikeyd <apikeyd@example.com>`
    /// (`smtp.from`).
    Mailbox,
}

/// Longest bare address SMTP carries: RFC 5321 limits a path, angle brackets
/// included, to 256 octets; lettre does not check it, the server refuses it.
const MAX_BARE_LEN: usize = 254;

/// Whether `value` is an address of `form` that delivery can send to.
pub fn is_address(value: &str, form: AddressForm) -> bool {
    let delivers = value.parse::<Mailbox>().is_ok();
    match form {
        AddressForm::Mailbox => delivers,
        // The mailbox parser also takes a display name and surrounding white space;
        // lettre's `Address` parser takes the bare address alone.
        AddressForm::Bare => {
            delivers && value.len() <= MAX_BARE_LEN && value.parse::<Address>().is_ok()
        }
    }
}

impl Validator {
    /// Reports `value` under `key` unless it is an address of `form`.
    pub(crate) fn address(&mut self, key: &str, value: &str, form: AddressForm) {
        if is_address(value, form) {
            return;
        }
        let message = match form {
            AddressForm::Bare => format!("{value:?} is not an email address"),
            AddressForm::Mailbox => {
                format!("{value:?} is not an address such as \"apikeyd <apikeyd@example.com>\"")
            }
        };
        self.push(key, message);
    }
}

#[cfg(test)]
mod tests;
