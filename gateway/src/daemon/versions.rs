//! Art. 16: which version of an agreement's profile governs a message.
//!
//! konvert.toml may list several versions of one agreement's profile (an
//! amending protocol is a new version with `version_in_force_from`). A
//! message of an existing request case is judged by the version the case
//! was opened under, whatever has been loaded since; a request, or a
//! message outside cases, by the version in force at its time
//! ([`ProfileVersions::at`]). The agreement's dates in force (Art. 17) are
//! those of the highest loaded version. Both gateways pick the same way, so
//! they open a case under the same version.

use konvert_envelope::model::{AgreementId, Id, Message, MessageBody};
use konvert_envelope::profile::{Profile, ProfileVersionError, ProfileVersions};
use konvert_envelope::workflow::{Case, CaseBook};

/// Why no profile version governs a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// No version applies at the message's time (not in force, terminated,
    /// before the first version, or an unknown agreement).
    #[error(transparent)]
    At(#[from] ProfileVersionError),
    /// The version a case was opened under is no longer loaded.
    #[error(
        "case {case} was opened under version {version} of agreement {agreement}, which is not loaded: \
         keep every version's profile file in `profiles` of konvert.toml"
    )]
    CaseVersionMissing {
        /// The agreement.
        agreement: AgreementId,
        /// The case's version.
        version: u32,
        /// The case.
        case: Id,
    },
}

/// The request case a message belongs to (a request opens its own, so it has none yet).
pub fn case_of_message<'b>(book: &'b CaseBook, msg: &Message) -> Option<&'b Case> {
    match &msg.body {
        MessageBody::Request(_) => None,
        MessageBody::AuthenticityQuery(q) => book.case_of(&q.message),
        _ => msg.header.in_reply_to.and_then(|r| book.case_of(&r)),
    }
}

/// The profile version that governs `msg` (see the module documentation).
pub fn governing<'v>(
    versions: &'v ProfileVersions,
    book: &CaseBook,
    msg: &Message,
) -> Result<&'v Profile, VersionError> {
    let agreement = &msg.header.agreement;
    match case_of_message(book, msg).filter(|c| c.agreement() == agreement) {
        Some(case) => {
            versions
                .get(agreement, case.profile_version())
                .ok_or_else(|| VersionError::CaseVersionMissing {
                    agreement: agreement.clone(),
                    version: case.profile_version(),
                    case: case.id(),
                })
        }
        None => Ok(versions.at(agreement, msg.header.time)?),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::path::Path;

    fn text() -> String {
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/profiles/kz-by-2019.toml"),
        )
        .unwrap()
    }

    fn example(name: &str) -> Message {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../docs/examples/{name}.json")),
        )
        .unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// Version 2 applies from `from` and shortens the deadline to 20 days.
    fn v2(from: &str) -> Profile {
        let t = text()
            .replacen("version = 1", "version = 2", 1)
            .replacen(
                "# version_in_force_from = \"YYYY-MM-DD\"",
                &format!("version_in_force_from = \"{from}\""),
                1,
            )
            .replacen("answer_deadline_days = 30", "answer_deadline_days = 20", 1);
        Profile::from_toml_str(&t, "v2").unwrap()
    }

    #[test]
    fn konvert_toml_may_list_several_versions_of_an_agreement_each_once() {
        let t = tempfile::tempdir().unwrap();
        let r = crate::init::init(&crate::init::InitOptions {
            authority: konvert_envelope::model::AuthorityId::new("kz.mvd").unwrap(),
            dir: t.path().join("kz"),
            listen: "127.0.0.1:7443".parse().unwrap(),
            api_socket: None,
            name: None,
            signatory: "head".into(),
            force: false,
        })
        .unwrap();
        let dir = t.path().join("kz");
        let v2_text = text().replacen("version = 1", "version = 2", 1).replacen(
            "# version_in_force_from = \"YYYY-MM-DD\"",
            "version_in_force_from = \"2026-01-01\"",
            1,
        );
        std::fs::write(dir.join("profiles/kz-by-2019-v2.toml"), v2_text).unwrap();
        let cfg = std::fs::read_to_string(&r.config).unwrap();
        let listed = "\"profiles/kz-by-2019.toml\"";
        assert!(cfg.contains(listed), "{cfg}");
        std::fs::write(
            &r.config,
            cfg.replacen(
                listed,
                "\"profiles/kz-by-2019.toml\", \"profiles/kz-by-2019-v2.toml\"",
                1,
            ),
        )
        .unwrap();
        let loaded = crate::config::Loaded::load(&r.config).unwrap();
        let id = AgreementId::new("kz-by-2019").unwrap();
        assert_eq!(
            loaded.profiles[&id].version(),
            2,
            "the highest version's dates govern"
        );
        assert_eq!(loaded.versions.get(&id, 1).unwrap().version(), 1);
        assert_eq!(loaded.versions.get(&id, 2).unwrap().version(), 2);
        // The same version twice is refused, naming the entry.
        std::fs::write(
            &r.config,
            cfg.replacen(
                listed,
                "\"profiles/kz-by-2019.toml\", \"profiles/kz-by-2019.toml\"",
                1,
            ),
        )
        .unwrap();
        let e = crate::config::Loaded::load(&r.config).unwrap_err().to_string();
        assert!(e.contains("profiles[1]") && e.contains("version 1"), "{e}");
    }

    #[test]
    fn a_case_keeps_its_version_and_a_new_request_takes_the_one_in_force() {
        let v1 = Profile::from_toml_str(&text(), "v1").unwrap();
        let req = example("request");
        let day = req.header.time.date_utc();
        let mut versions = ProfileVersions::new();
        versions.insert(v1.clone()).unwrap();
        let mut book = CaseBook::default();
        let p = governing(&versions, &book, &req).unwrap();
        assert_eq!(p.version(), 1);
        let at = req.header.time.plus_secs(60);
        book.apply(&req, at, at, p).unwrap();
        // The amendment applies from the day after the request.
        let next = day.tomorrow().unwrap().to_string();
        versions.insert(v2(&next)).unwrap();
        // The answer to the old case: still version 1, even after the amendment's date.
        let mut resp = example("response");
        resp.header.in_reply_to = Some(req.header.id);
        resp.header.time = req.header.time.plus_secs(3 * 86_400);
        assert_eq!(governing(&versions, &book, &resp).unwrap().version(), 1);
        // A new request after that date: version 2; one made before it: version 1.
        let mut later = req.clone();
        later.header.id = Id::new(resp.header.time);
        later.header.time = resp.header.time;
        assert_eq!(governing(&versions, &book, &later).unwrap().version(), 2);
        assert_eq!(governing(&versions, &book, &req).unwrap().version(), 1);
        // A case whose version is no longer loaded is an error that names it.
        let mut only_v2 = ProfileVersions::new();
        only_v2.insert(v2(&next)).unwrap();
        let e = governing(&only_v2, &book, &resp).unwrap_err();
        assert!(
            matches!(e, VersionError::CaseVersionMissing { version: 1, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("version 1"), "{e}");
        // An agreement with no version loaded.
        let empty = ProfileVersions::new();
        assert!(matches!(
            governing(&empty, &book, &later),
            Err(VersionError::At(ProfileVersionError::UnknownAgreement(_)))
        ));
    }
}
