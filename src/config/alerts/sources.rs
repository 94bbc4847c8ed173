//! `[alert_sources.NAME]`: what each alert source does (email, operator message or
//! plugin), the built-in sources, and the templates of emails and operator messages
//! and their placeholders.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::config::address::AddressForm;
use crate::config::directory::valid_name;
use crate::config::validator::Validator;

/// Built-in source: email to the key's owner (replaceable in the file).
pub const OWNER_EMAIL: &str = "owner-email";
/// Built-in source: an operator message (replaceable in the file).
pub const OPERATOR: &str = "operator";

/// Placeholders a template (email subject and body, operator message title and
/// text) may use. None of them can reveal a secret or its hash.
pub const TEMPLATE_FIELDS: &[&str] = &[
    "key.id",
    "key.name",
    "key.owner",
    "key.description",
    "key.expires_at",
    "key.effective_expires_at",
    "key.effective_limit",
    "key.details",
    "key.console_url",
    "alert.reason",
    "alert.action",
    "alert.due_at",
    "alert.console_line",
    "job.id",
];

/// Default email subject.
pub const DEFAULT_SUBJECT: &str = "API key \"${key.name}\" ${alert.reason}";
/// Default email body.
pub const DEFAULT_BODY: &str = "Hello ${key.owner},

your API key \"${key.name}\" (id ${key.id}) ${alert.reason}.

  expires:            ${key.expires_at}
  effective expiry:   ${key.effective_expires_at} (${key.effective_limit})
  details:            ${key.details}
  description:        ${key.description}

To keep your service working, ${alert.action}.
${alert.console_line}
-- apikeyd (alert job ${job.id}, due ${alert.due_at})
";

/// Default operator message title.
pub const DEFAULT_TITLE: &str = "API key \"${key.name}\" of ${key.owner} ${alert.reason}";
/// Default operator message text.
pub const DEFAULT_TEXT: &str =
    "Key ${key.id} (\"${key.name}\", owner ${key.owner}) ${alert.reason}. \
     Details: ${key.details}. To keep it working, ${alert.action}";

/// What a source does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    /// Email through `[smtp]`.
    Email {
        /// Send to the key owner's address.
        to_owner: bool,
        /// Extra recipients.
        to: Vec<String>,
        /// Copy recipients.
        cc: Vec<String>,
        /// Subject template.
        subject: String,
        /// Body template.
        body: String,
    },
    /// A message stored for the operators (and logged at warn level).
    OperatorMessage {
        /// Title template (one line).
        title: String,
        /// Text template.
        text: String,
    },
    /// An executable under the plugins directory, given the alert as JSON on stdin.
    Plugin {
        /// File name under `[alerts] plugins_dir`.
        plugin: String,
        /// Arguments.
        args: Vec<String>,
        /// Killed after this long.
        timeout: Duration,
    },
}

impl SourceKind {
    /// The built-in `owner-email`: the default templates, to the key's owner.
    fn owner_email() -> Self {
        Self::Email {
            to_owner: true,
            to: vec![],
            cc: vec![],
            subject: DEFAULT_SUBJECT.into(),
            body: DEFAULT_BODY.into(),
        }
    }

    /// The built-in `operator`: an operator message with the default templates.
    pub fn operator_message() -> Self {
        Self::OperatorMessage {
            title: DEFAULT_TITLE.into(),
            text: DEFAULT_TEXT.into(),
        }
    }
}

/// `[alert_sources.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertSource {
    /// Its name.
    pub name: String,
    /// What it does.
    pub kind: SourceKind,
}

impl AlertSource {
    /// Whether this source reaches a key's owner only through their email address
    /// (an email source without a fixed `to`): it cannot deliver for an owner who
    /// has none.
    pub fn needs_owner_address(&self) -> bool {
        matches!(&self.kind, SourceKind::Email { to_owner: true, to, .. } if to.is_empty())
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAlertSource {
    kind: Option<String>,
    owner: Option<bool>,
    #[serde(default)]
    to: Vec<String>,
    #[serde(default)]
    cc: Vec<String>,
    subject: Option<String>,
    body: Option<String>,
    title: Option<String>,
    text: Option<String>,
    plugin: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    timeout: Option<String>,
}

pub(crate) const SOURCE_KEYS: &[&str] = &[
    "kind", "owner", "to", "cc", "subject", "body", "title", "text", "plugin", "args", "timeout",
];

/// Placeholders in `template` that are not in [`TEMPLATE_FIELDS`], or an error for an
/// unterminated `${`.
pub fn check_template(template: &str) -> Result<(), String> {
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err("has a \"${\" without a closing \"}\"".into());
        };
        let name = &after[..end];
        if !TEMPLATE_FIELDS.contains(&name) {
            return Err(format!(
                "unknown placeholder ${{{name}}} (known: {})",
                TEMPLATE_FIELDS
                    .iter()
                    .map(|f| format!("${{{f}}}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        rest = &after[end + 1..];
    }
    Ok(())
}

impl Validator {
    /// The sources of the file, with the built-ins unless it replaces them.
    pub(crate) fn sources(
        &mut self,
        raw: BTreeMap<String, RawAlertSource>,
    ) -> BTreeMap<String, AlertSource> {
        let mut out = BTreeMap::new();
        let builtins = [
            (OWNER_EMAIL, SourceKind::owner_email()),
            (OPERATOR, SourceKind::operator_message()),
        ];
        for (name, kind) in builtins {
            out.insert(
                name.to_owned(),
                AlertSource {
                    name: name.into(),
                    kind,
                },
            );
        }
        for (name, s) in raw {
            if let Some(kind) = self.source(&name, s) {
                out.insert(name.clone(), AlertSource { name, kind });
            }
        }
        out
    }

    /// `None` for a source of no known kind (reported).
    fn source(&mut self, name: &str, s: RawAlertSource) -> Option<SourceKind> {
        let key = format!("alert_sources.{name}");
        self.name(&key, name, "source");
        let given = [
            ("owner", s.owner.is_some()),
            ("subject", s.subject.is_some()),
            ("body", s.body.is_some()),
            ("title", s.title.is_some()),
            ("text", s.text.is_some()),
            ("plugin", s.plugin.is_some()),
            ("timeout", s.timeout.is_some()),
        ];
        let kind = match s.kind.as_deref() {
            Some("email") => self.email_source(&key, s),
            Some("operator_message") => SourceKind::OperatorMessage {
                title: self.template(&key, "title", s.title, DEFAULT_TITLE, true),
                text: self.template(&key, "text", s.text, DEFAULT_TEXT, false),
            },
            Some("plugin") => self.plugin_source(&key, s),
            other => {
                self.push(
                    &format!("{key}.kind"),
                    format!(
                        "{} is not one of \"email\", \"operator_message\", \"plugin\"",
                        other.map_or_else(|| "missing".to_owned(), |o| format!("{o:?}"))
                    ),
                );
                return None;
            }
        };
        let is_email = matches!(kind, SourceKind::Email { .. });
        let is_plugin = matches!(kind, SourceKind::Plugin { .. });
        let is_operator = matches!(kind, SourceKind::OperatorMessage { .. });
        for (field, present) in given {
            let applies = match field {
                "plugin" | "timeout" => is_plugin,
                "title" | "text" => is_operator,
                _ => is_email,
            };
            if present && !applies {
                self.push(
                    &format!("{key}.{field}"),
                    "does not apply to this kind of source".into(),
                );
            }
        }
        Some(kind)
    }

    fn email_source(&mut self, key: &str, s: RawAlertSource) -> SourceKind {
        for (field, list) in [("to", &s.to), ("cc", &s.cc)] {
            for a in list {
                self.address(&format!("{key}.{field}"), a, AddressForm::Bare);
            }
        }
        let to_owner = s.owner.unwrap_or(true);
        if !to_owner && s.to.is_empty() {
            self.push(
                &format!("{key}.to"),
                "with owner = false, name at least one recipient".into(),
            );
        }
        SourceKind::Email {
            to_owner,
            to: s.to,
            cc: s.cc,
            subject: self.template(key, "subject", s.subject, DEFAULT_SUBJECT, true),
            body: self.template(key, "body", s.body, DEFAULT_BODY, false),
        }
    }

    /// The template `key.field` (`default` when unset), its placeholders checked; a
    /// heading (email subject, message title) must be one line.
    fn template(
        &mut self,
        key: &str,
        field: &str,
        value: Option<String>,
        default: &str,
        heading: bool,
    ) -> String {
        let template = value.unwrap_or_else(|| default.into());
        if let Err(e) = check_template(&template) {
            self.push(&format!("{key}.{field}"), e);
        }
        if heading && template.contains(['\r', '\n']) {
            self.push(&format!("{key}.{field}"), "must be one line".into());
        }
        template
    }

    fn plugin_source(&mut self, key: &str, s: RawAlertSource) -> SourceKind {
        let plugin = s.plugin.unwrap_or_default();
        if plugin.is_empty()
            || plugin.contains('/')
            || plugin.starts_with('.')
            || !valid_name(&plugin)
        {
            self.push(
                &format!("{key}.plugin"),
                format!(
                    "{plugin:?} must name an executable file in the plugins directory (no '/')"
                ),
            );
        }
        SourceKind::Plugin {
            plugin,
            args: s.args,
            timeout: self.duration(&format!("{key}.timeout"), s.timeout.as_deref(), "pt30s"),
        }
    }

    /// `[ApiKey] DefaultAlertSource`: unset means the built-in owner email, empty
    /// means none.
    pub(crate) fn default_source(
        &mut self,
        value: Option<&str>,
        sources: &BTreeMap<String, AlertSource>,
    ) -> Option<String> {
        match value.map(str::trim) {
            None => Some(OWNER_EMAIL.to_owned()),
            Some("") => None,
            Some(name) => {
                if !sources.contains_key(name) {
                    self.push(
                        "ApiKey.DefaultAlertSource",
                        format!(
                            "unknown alert source {name:?} (known: {})",
                            sources.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    );
                }
                Some(name.to_owned())
            }
        }
    }
}
