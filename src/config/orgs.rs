//! Validation of the organizations: `[[orgs]]`, `upstream.organization_id`
//! and `clients.orgs`, each problem naming its key.

use std::collections::HashSet;

use super::defaults::DEFAULT_ORG;
use super::raw::{RawClient, RawOrg};
use super::validate::{valid_name, Validator};
use super::{EnvLookup, OrgConfig};

/// Longest accepted `organization_id` (OpenAI's are about 30 characters).
const MAX_ORGANIZATION_ID: usize = 128;

impl Validator<'_> {
    /// `[[orgs]]`: each entry, and names and ids against each other and
    /// the default organization's (`upstream.organization_id`, `default_id`).
    pub(super) fn orgs(
        &mut self,
        raw: Vec<RawOrg>,
        default_id: Option<&str>,
        env: EnvLookup<'_>,
    ) -> Vec<OrgConfig> {
        let mut out: Vec<OrgConfig> = Vec::with_capacity(raw.len());
        for (i, o) in raw.into_iter().enumerate() {
            let Some(o) = self.org(i, o, env) else {
                continue;
            };
            if out.iter().any(|p| p.name == o.name) {
                self.problem(format!("orgs[{i}].name: {:?} is used twice", o.name));
            }
            let id = o.organization_id.as_str();
            if default_id == Some(id) || out.iter().any(|p| p.organization_id == id) {
                self.problem(format!(
                    "orgs[{i}].organization_id: {id:?} is used by two organizations"
                ));
            }
            out.push(o);
        }
        out
    }

    fn org(&mut self, i: usize, raw: RawOrg, env: EnvLookup<'_>) -> Option<OrgConfig> {
        let RawOrg {
            name,
            organization_id,
            admin_key_env,
            admin_key_file,
            rate_limit,
        } = raw;
        let at = format!("orgs[{i}]");
        let name = match name {
            Some(n) if n == DEFAULT_ORG => {
                self.problem(format!(
                    "{at}.name: \"{DEFAULT_ORG}\" is the [upstream] organization; pick another name"
                ));
                None
            }
            Some(n) if valid_name(&n) => Some(n),
            Some(n) => {
                self.problem(format!(
                    "{at}.name: {n:?} must be 1-64 characters of A-Z a-z 0-9 . _ -"
                ));
                None
            }
            None => {
                self.problem(format!("{at}.name: missing"));
                None
            }
        };
        let organization_id = match organization_id {
            Some(id) => self.organization_id(&format!("{at}.organization_id"), id),
            None => {
                self.problem(format!("{at}.organization_id: missing"));
                None
            }
        };
        let key_file = admin_key_file.as_ref().map(|p| self.path(p.clone()));
        let admin_key = self.admin_key(&at, admin_key_env, admin_key_file, env);
        let rate_limit = rate_limit.and_then(|r| self.rate_limit(&format!("{at}.rate_limit"), r));
        Some(OrgConfig {
            name: name?,
            organization_id: organization_id?,
            admin_key: admin_key?,
            admin_key_file: key_file,
            rate_limit,
        })
    }

    /// An `organization_id` as it will be sent in a header: 1-128
    /// characters of `A-Z a-z 0-9 . _ -`.
    pub(super) fn organization_id(&mut self, key: &str, id: String) -> Option<String> {
        let ok = (1..=MAX_ORGANIZATION_ID).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Some(id)
        } else {
            self.problem(format!(
                "{key}: {id:?} must be 1-{MAX_ORGANIZATION_ID} characters of A-Z a-z 0-9 . _ -"
            ));
            None
        }
    }

    /// A client's `orgs`: names only (checked against the file's
    /// organizations in [`Validator::client_org_names`]); `["default"]` unless set.
    pub(super) fn client_orgs(&mut self, i: usize, orgs: Option<Vec<String>>) -> Vec<String> {
        let Some(orgs) = orgs else {
            return vec![DEFAULT_ORG.to_string()];
        };
        if orgs.is_empty() {
            self.problem(format!(
                "clients[{i}].orgs: needs at least one organization (or leave it out for [\"{DEFAULT_ORG}\"])"
            ));
        }
        if orgs.len() > usize::from(u8::MAX) {
            self.problem(format!(
                "clients[{i}].orgs: at most {} organizations per client",
                u8::MAX
            ));
        }
        let mut seen = HashSet::new();
        for o in &orgs {
            if !seen.insert(o.as_str()) {
                self.problem(format!("clients[{i}].orgs: {o:?} is listed twice"));
            }
        }
        orgs
    }

    /// Client `orgs` naming no organization of the file (read before
    /// validation, so each problem names the client's own index).
    pub(super) fn client_org_names(&mut self, orgs: &[RawOrg], clients: &[RawClient]) {
        let names: Vec<&str> = std::iter::once(DEFAULT_ORG)
            .chain(orgs.iter().filter_map(|o| o.name.as_deref()))
            .collect();
        for (i, c) in clients.iter().enumerate() {
            for o in c.orgs.iter().flatten() {
                if !names.contains(&o.as_str()) {
                    self.problem(format!(
                        "clients[{i}].orgs: {o:?} is no configured organization (\"{DEFAULT_ORG}\" or an [[orgs]] name)"
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn parse(text: &str) -> Result<Config, crate::ConfigError> {
        Config::parse(text, std::path::Path::new("."), &|n| match n {
            "OPENAI_ADMIN_KEY" => Some("sk-admin-main".to_string()),
            "KEY_R" => Some("sk-admin-research".to_string()),
            _ => None,
        })
    }

    const CLIENT: &str =
        "key_sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\n";

    #[test]
    fn organizations_parse_and_clients_default_to_the_default_one() {
        let c = parse(&format!(
            "[upstream]\norganization_id = \"org-main\"\n\
             [[orgs]]\nname = \"research\"\norganization_id = \"org-research\"\nadmin_key_env = \"KEY_R\"\n\
             rate_limit = {{ requests_per_minute = 60, burst = 5 }}\n\
             [[clients]]\nname = \"a\"\n{CLIENT}\
             [[clients]]\nname = \"b\"\norgs = [\"research\", \"default\"]\n\
             key_sha256 = \"1111111111111111111111111111111111111111111111111111111111111111\"\n"
        ))
        .expect("valid");
        assert_eq!(c.upstream.organization_id.as_deref(), Some("org-main"));
        assert_eq!(c.orgs.len(), 1);
        let r = &c.orgs[0];
        assert_eq!(
            (r.name.as_str(), r.organization_id.as_str()),
            ("research", "org-research")
        );
        assert_eq!(r.admin_key.expose(), "sk-admin-research");
        assert_eq!(r.rate_limit.map(|l| l.burst), Some(5));
        assert_eq!(c.clients[0].orgs, ["default"]);
        assert_eq!(c.clients[1].orgs, ["research", "default"]);
    }

    #[test]
    fn every_organization_problem_is_named_with_its_key() {
        let e = parse(&format!(
            "[upstream]\norganization_id = \"org-x\"\n\
             [[orgs]]\nname = \"default\"\norganization_id = \"org-a\"\nadmin_key_env = \"KEY_R\"\n\
             [[orgs]]\nname = \"r\"\norganization_id = \"org-x\"\nadmin_key_env = \"KEY_R\"\n\
             [[orgs]]\nname = \"s\"\norganization_id = \"org-s\"\nadmin_key_env = \"KEY_R\"\n\
             [[orgs]]\nname = \"s\"\norganization_id = \"org-s2\"\nadmin_key_env = \"KEY_R\"\n\
             [[orgs]]\nname = \"t\"\n\
             [[orgs]]\nname = \"u\"\norganization_id = \"org u\"\nadmin_key_env = \"NOPE\"\n\
             [[clients]]\nname = \"bad name\"\n{CLIENT}\
             [[clients]]\nname = \"a\"\norgs = [\"nope\", \"s\", \"s\"]\n{CLIENT}"
        ))
        .unwrap_err();
        let all = e.to_string();
        for want in [
            "orgs[0].name: \"default\" is the [upstream] organization",
            "orgs[1].organization_id: \"org-x\" is used by two organizations",
            "orgs[3].name: \"s\" is used twice",
            "orgs[4].organization_id: missing",
            "orgs[4].admin_key_env: missing",
            "orgs[5].organization_id: \"org u\" must be",
            "orgs[5].admin_key_env: environment variable NOPE is not set",
            "clients[1].orgs: \"nope\" is no configured organization",
            "clients[1].orgs: \"s\" is listed twice",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
    }

    #[test]
    fn an_organizations_key_file_is_read_and_watched() {
        let path = std::env::temp_dir().join(format!("oag-orgs-unit-{}-key", std::process::id()));
        std::fs::write(&path, "sk-admin-from-file\n").expect("write");
        let c = parse(&format!(
            "[[orgs]]\nname = \"r\"\norganization_id = \"org-r\"\nadmin_key_file = {:?}\n",
            path.display().to_string()
        ))
        .expect("valid");
        assert_eq!(c.orgs[0].admin_key.expose(), "sk-admin-from-file");
        assert!(c.dependent_files().contains(&path), "the watch follows it");
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_client_key_equal_to_an_organizations_admin_key_is_refused() {
        let digest = crate::secret::digest(b"sk-admin-research");
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let e = parse(&format!(
            "[[orgs]]\nname = \"r\"\norganization_id = \"org-r\"\nadmin_key_env = \"KEY_R\"\n\
             [[clients]]\nname = \"a\"\nkey_sha256 = \"{hex}\"\n"
        ))
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("clients[0].key_sha256: is the hash of an admin key"),
            "{e}"
        );
    }
}
