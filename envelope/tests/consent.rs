//! Purpose binding and onward transfer (Art. 11.2, 11.3): the consent ledger.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use common::authority;
use common::flow::*;
use konvert_envelope::consent::*;
use konvert_envelope::model::*;
use konvert_envelope::receipt::RejectCode;

const PURPOSE_AM: &str = "Проверка законности пребывания.";
const PURPOSE_BY: &str = "Розыск лица, уклоняющегося от выдворения.";

fn arm() -> CountryCode {
    CountryCode::new("ARM").unwrap()
}
fn blr() -> CountryCode {
    CountryCode::new("BLR").unwrap()
}
fn kaz() -> CountryCode {
    CountryCode::new("KAZ").unwrap()
}

/// am.police answered kz.mvd's request under kz-am-2024; both sides' ledgers.
fn am_answer() -> (ConsentLedger, Message) {
    let req = msg_under(
        "kz-am-2024",
        "kz.mvd",
        "am.police",
        "2026-10-01T09:00:00Z",
        None,
        request_body(PURPOSE_AM),
    );
    let resp = msg_under(
        "kz-am-2024",
        "am.police",
        "kz.mvd",
        "2026-10-10T09:00:00Z",
        Some(req.header.id),
        response_body(PURPOSE_AM, Outcome::Fulfilled),
    );
    let mut l = ConsentLedger::new();
    assert!(l.record_message(&req, kaz(), None));
    assert!(l.record_message(&resp, arm(), None));
    (l, resp)
}

fn to_by_mvd() -> AuthorityId {
    authority("by.mvd")
}

fn transfer(recipient: &AuthorityId) -> Use<'_> {
    Use::Transfer {
        recipient,
        country: blr(),
        purpose: PURPOSE_BY,
    }
}

fn third_party(recipient: &str, country: Option<CountryCode>, purpose: &str) -> ConsentScope {
    ConsentScope::ThirdParty {
        country,
        recipient: recipient.into(),
        purpose: purpose.into(),
    }
}

fn at() -> Timestamp {
    ts("2026-11-01T00:00:00Z")
}

#[test]
fn onward_transfer_is_refused_without_consent_naming_the_missing_consent() {
    let (l, resp) = am_answer();
    let by = to_by_mvd();
    let e = l.check(&resp.header.id, &transfer(&by), at()).unwrap_err();
    assert_eq!(e.reject_code(), RejectCode::ConsentMissing);
    let ConsentError::Missing(m) = &e else {
        panic!("{e}")
    };
    assert_eq!(m.data, resp.header.id);
    assert_eq!(m.provider, authority("am.police"));
    assert_eq!(
        m.wanted,
        Wanted::ThirdParty {
            recipient: by.clone(),
            country: blr()
        }
    );
    assert_eq!(m.status, MissingStatus::NotRequested);
    let text = e.to_string();
    for part in [
        "am.police",
        "by.mvd",
        "BLR",
        &resp.header.id.to_string(),
        "Art. 11.3",
    ] {
        assert!(text.contains(part), "{part} in {text}");
    }
    assert!(!text.contains("Розыск"), "no purpose text in errors: {text}");
}

#[test]
fn onward_transfer_is_allowed_with_a_granted_matching_consent() {
    let (mut l, resp) = am_answer();
    let by = to_by_mvd();
    let cr = consent_request(
        "kz.mvd",
        "am.police",
        &resp,
        "2026-10-15T09:00:00Z",
        third_party("by.mvd", Some(blr()), PURPOSE_BY),
    );
    l.apply(&cr).unwrap();
    let e = l.check(&resp.header.id, &transfer(&by), at()).unwrap_err();
    let ConsentError::Missing(m) = e else { panic!() };
    assert_eq!(
        m.status,
        MissingStatus::Pending {
            request: cr.header.id
        }
    );
    let cd = consent_decision(&cr, "2026-10-20T09:00:00Z", true);
    l.apply(&cd).unwrap();
    l.check(&resp.header.id, &transfer(&by), at()).unwrap();
    // Not before the decision was made.
    assert!(l
        .check(&resp.header.id, &transfer(&by), ts("2026-10-19T00:00:00Z"))
        .is_err());
    // Not for another recipient or another purpose.
    let gpk = authority("by.gpk");
    assert!(l.check(&resp.header.id, &transfer(&gpk), at()).is_err());
    let other = Use::Transfer {
        recipient: &by,
        country: blr(),
        purpose: "Иная цель.",
    };
    assert!(l.check(&resp.header.id, &other, at()).is_err());
    assert_eq!(l.check_all(&[resp.header.id], &transfer(&by), at()), Ok(()));
}

#[test]
fn a_refused_consent_is_reported_as_refused() {
    let (mut l, resp) = am_answer();
    let cr = consent_request(
        "kz.mvd",
        "am.police",
        &resp,
        "2026-10-15T09:00:00Z",
        third_party("by.mvd", None, PURPOSE_BY),
    );
    l.apply(&cr).unwrap();
    l.apply(&consent_decision(&cr, "2026-10-20T09:00:00Z", false))
        .unwrap();
    let by = to_by_mvd();
    let ConsentError::Missing(m) = l.check(&resp.header.id, &transfer(&by), at()).unwrap_err() else {
        panic!()
    };
    assert_eq!(
        m.status,
        MissingStatus::Refused {
            request: cr.header.id
        }
    );
    assert!(ConsentError::Missing(m).to_string().contains("was refused"));
}

#[test]
fn use_for_another_purpose_needs_consent() {
    let (mut l, resp) = am_answer();
    // The purpose it was provided for needs none.
    l.check(&resp.header.id, &Use::Purpose { purpose: PURPOSE_AM }, at())
        .unwrap();
    let other = Use::Purpose {
        purpose: "Статистика.",
    };
    let e = l.check(&resp.header.id, &other, at()).unwrap_err();
    let ConsentError::Missing(m) = &e else { panic!() };
    assert_eq!(m.wanted, Wanted::OtherPurpose);
    assert!(e.to_string().contains("Art. 11.2"));
    let cr = consent_request(
        "kz.mvd",
        "am.police",
        &resp,
        "2026-10-15T09:00:00Z",
        ConsentScope::OtherPurpose {
            purpose: "Статистика.".into(),
        },
    );
    l.apply(&cr).unwrap();
    l.apply(&consent_decision(&cr, "2026-10-16T09:00:00Z", true))
        .unwrap();
    l.check(&resp.header.id, &other, at()).unwrap();
    // A purpose consent is no transfer consent.
    let by = to_by_mvd();
    assert!(l.check(&resp.header.id, &transfer(&by), at()).is_err());
}

#[test]
fn no_consent_is_needed_back_to_the_providing_state_or_for_unsolicited_use() {
    let (l, resp) = am_answer();
    let mcs = authority("am.mcs");
    l.check(
        &resp.header.id,
        &Use::Transfer {
            recipient: &mcs,
            country: arm(),
            purpose: PURPOSE_BY,
        },
        at(),
    )
    .unwrap();
    let mut l = l;
    let u = msg_under(
        "kz-am-2024",
        "am.police",
        "kz.mvd",
        "2026-10-10T09:00:00Z",
        None,
        unsolicited("am.police", "kz.mvd", "2026-10-10T09:00:00Z").body,
    );
    assert!(l.record_message(&u, arm(), None));
    l.check(
        &u.header.id,
        &Use::Purpose {
            purpose: "Любая."
        },
        at(),
    )
    .unwrap();
    // ... but passing it to a third party still needs a consent (Art. 11.3).
    let by = to_by_mvd();
    assert!(l.check(&u.header.id, &transfer(&by), at()).is_err());
}

#[test]
fn an_outgoing_message_needs_the_consent_its_use_of_each_source_needs() {
    let (mut l, resp) = am_answer();
    let (kz, by, mcs, am) = (
        authority("kz.mvd"),
        to_by_mvd(),
        authority("am.mcs"),
        authority("am.police"),
    );
    let data = resp.header.id;
    // Back to the provider or its state for the purpose it was provided for: free.
    l.check_outgoing(&data, &kz, &am, arm(), PURPOSE_AM, at())
        .unwrap();
    l.check_outgoing(&data, &kz, &mcs, arm(), PURPOSE_AM, at())
        .unwrap();
    // For another purpose, even to the provider itself: Art. 11.2.
    for to in [&am, &mcs] {
        let e = l
            .check_outgoing(&data, &kz, to, arm(), PURPOSE_BY, at())
            .unwrap_err();
        let ConsentError::Missing(m) = &e else {
            panic!("{e}")
        };
        assert_eq!(m.wanted, Wanted::OtherPurpose);
        assert_eq!(m.provider, am);
        assert_eq!(e.reject_code(), RejectCode::ConsentMissing);
        assert!(e.to_string().contains("Art. 11.2"), "{e}");
    }
    // To a third party: Art. 11.3, whatever the purpose.
    for purpose in [PURPOSE_AM, PURPOSE_BY] {
        let e = l
            .check_outgoing(&data, &kz, &by, blr(), purpose, at())
            .unwrap_err();
        let ConsentError::Missing(m) = &e else {
            panic!("{e}")
        };
        assert!(matches!(m.wanted, Wanted::ThirdParty { .. }), "{e}");
    }
    // A consent to the other purpose settles Art. 11.2 only.
    let cr = consent_request(
        "kz.mvd",
        "am.police",
        &resp,
        "2026-10-15T09:00:00Z",
        ConsentScope::OtherPurpose {
            purpose: PURPOSE_BY.into(),
        },
    );
    l.apply(&cr).unwrap();
    l.apply(&consent_decision(&cr, "2026-10-16T09:00:00Z", true))
        .unwrap();
    l.check_outgoing(&data, &kz, &am, arm(), PURPOSE_BY, at())
        .unwrap();
    assert!(l
        .check_outgoing(&data, &kz, &by, blr(), PURPOSE_BY, at())
        .is_err());
    // A transfer consent names its purpose: it settles Art. 11.2 for that transfer.
    let cr = consent_request(
        "kz.mvd",
        "am.police",
        &resp,
        "2026-10-17T09:00:00Z",
        third_party("by.mvd", Some(blr()), "Иная цель."),
    );
    l.apply(&cr).unwrap();
    l.apply(&consent_decision(&cr, "2026-10-18T09:00:00Z", true))
        .unwrap();
    l.check_outgoing(&data, &kz, &by, blr(), "Иная цель.", at())
        .unwrap();
    // The provider's own data is its own.
    l.check_outgoing(&data, &am, &by, blr(), "Любая.", at()).unwrap();
    // Unknown data.
    assert!(matches!(
        l.check_outgoing(&fresh_id(), &kz, &am, arm(), PURPOSE_AM, at()),
        Err(ConsentError::UnknownData(_))
    ));
}

#[test]
fn consent_messages_are_checked() {
    let (mut l, resp) = am_answer();
    // About data not on record.
    let stray = response(
        &request("2026-10-01T09:00:00Z"),
        "2026-10-02T09:00:00Z",
        Outcome::Fulfilled,
    );
    let cr = consent_request(
        "kz.mvd",
        "by.mvd",
        &stray,
        "2026-10-15T09:00:00Z",
        third_party("x", None, "y"),
    );
    let e = l.apply(&cr).unwrap_err();
    assert_eq!(e.reject_code(), RejectCode::UnknownCase);
    // Asked of someone who did not provide the data.
    let cr = consent_request(
        "kz.mvd",
        "am.mcs",
        &resp,
        "2026-10-15T09:00:00Z",
        third_party("by.mvd", None, PURPOSE_BY),
    );
    assert_eq!(l.apply(&cr).unwrap_err().reject_code(), RejectCode::NotAddressee);
    // A decision on an unknown request; from the wrong authority; twice.
    let cr = consent_request(
        "kz.mvd",
        "am.police",
        &resp,
        "2026-10-15T09:00:00Z",
        third_party("by.mvd", None, PURPOSE_BY),
    );
    let early = consent_decision(&cr, "2026-10-16T09:00:00Z", true);
    assert_eq!(
        l.apply(&early).unwrap_err().reject_code(),
        RejectCode::UnknownCase
    );
    l.apply(&cr).unwrap();
    l.apply(&cr).unwrap(); // idempotent
    let mut forged = consent_decision(&cr, "2026-10-16T09:00:00Z", true);
    forged.header.from = authority("am.mcs");
    assert_eq!(
        l.apply(&forged).unwrap_err().reject_code(),
        RejectCode::NotAddressee
    );
    let d = consent_decision(&cr, "2026-10-16T09:00:00Z", true);
    l.apply(&d).unwrap();
    l.apply(&d).unwrap(); // the same decision again changes nothing
    let e = l
        .apply(&consent_decision(&cr, "2026-10-17T09:00:00Z", false))
        .unwrap_err();
    assert_eq!(e.reject_code(), RejectCode::AlreadyAnswered);
    assert_eq!(
        l.apply(&resp).unwrap_err().reject_code(),
        RejectCode::WrongState,
        "not a consent message"
    );
    let mut no_reply = consent_decision(&cr, "2026-10-17T09:00:00Z", true);
    no_reply.header.in_reply_to = None;
    assert_eq!(
        l.apply(&no_reply).unwrap_err().reject_code(),
        RejectCode::InvalidMessage
    );
    assert_eq!(l.consents().count(), 1);
    assert!(l.consents().next().unwrap().decision.as_ref().unwrap().granted);
}

#[test]
fn unknown_data_and_persistence() {
    let (mut l, resp) = am_answer();
    let by = to_by_mvd();
    let e = l.check(&fresh_id(), &transfer(&by), at()).unwrap_err();
    assert!(matches!(e, ConsentError::UnknownData(_)));
    let cr = consent_request(
        "kz.mvd",
        "am.police",
        &resp,
        "2026-10-15T09:00:00Z",
        third_party("by.mvd", None, PURPOSE_BY),
    );
    l.apply(&cr).unwrap();
    let bytes = l.to_cbor().unwrap();
    assert_eq!(ConsentLedger::from_cbor(&bytes).unwrap(), l);
    let json = serde_json::to_string(&l).unwrap();
    assert!(!json.contains("Розыск"), "the ledger keeps no text: {json}");
    l.forget(&resp.header.id);
    assert!(l.provision(&resp.header.id).is_none());
    assert_eq!(l.consents().count(), 0);
    // Kinds without data are not provisions.
    assert!(!l.record_message(&cr, kaz(), None));
}
