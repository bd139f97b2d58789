//! The request case state machine (`konvert_envelope::workflow`): every
//! transition, every refusal with its receipt code, deadlines with injected
//! time, both sides agreeing, persistence, and random sequences.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use common::flow::*;
use common::{authority, profile};
use konvert_envelope::model::*;
use konvert_envelope::profile::Profile;
use konvert_envelope::receipt::RejectCode;
use konvert_envelope::workflow::*;
use proptest::prelude::*;

const T0: &str = "2026-10-05T09:00:00Z";

fn kz_by() -> Profile {
    profile("kz-by-2019")
}

/// Applies at the message's own time (received = now = header time).
fn apply(book: &mut CaseBook, m: &Message) -> Result<Applied, CaseError> {
    book.apply(m, m.header.time, m.header.time, &kz_by())
}

fn ok(book: &mut CaseBook, m: &Message) -> Applied {
    apply(book, m).unwrap_or_else(|e| panic!("{} refused: {e}", m.kind()))
}

fn err(book: &mut CaseBook, m: &Message) -> CaseError {
    let before = book.clone();
    let e = apply(book, m).expect_err("must be refused");
    assert_eq!(*book, before, "a refused message changes nothing");
    e
}

fn state(book: &CaseBook, req: &Message) -> String {
    book.case(&req.header.id).unwrap().state().code().to_owned()
}

/// A book with one request received at T0.
fn opened() -> (CaseBook, Message) {
    let mut b = CaseBook::new();
    let r = request(T0);
    ok(&mut b, &r);
    (b, r)
}

// ---------------------------------------------------------------- opening

#[test]
fn a_request_opens_a_case_with_the_profile_deadline() {
    let mut b = CaseBook::new();
    let r = request("2026-11-02T15:00:00Z");
    let applied = b
        .apply(
            &r,
            ts("2026-11-02T15:00:05Z"),
            ts("2026-11-02T15:00:05Z"),
            &kz_by(),
        )
        .unwrap();
    assert_eq!(
        applied,
        Applied::Opened {
            case: r.header.id,
            deadline: ts("2026-12-02T23:59:59Z")
        }
    );
    let c = b.case(&r.header.id).unwrap();
    assert_eq!(c.id(), r.header.id, "the case id is the request's message id");
    assert_eq!(c.state(), &CaseState::Received);
    assert_eq!(c.requester(), &authority("kz.mvd"));
    assert_eq!(c.requested(), &authority("by.mvd"));
    assert_eq!(c.profile_version(), 1);
    assert_eq!(c.received_at(), ts("2026-11-02T15:00:05Z"));
    assert_eq!(c.tracked_deadline(), Some(ts("2026-12-02T23:59:59Z")));
    assert_eq!(c.purpose(), &purpose_digest(PURPOSE));
}

#[test]
fn the_deadline_comes_from_the_profile_not_a_constant() {
    let text = std::fs::read_to_string(common::repo().join("deploy/profiles/kz-by-2019.toml")).unwrap();
    let p = Profile::from_toml_str(
        &text.replace("answer_deadline_days = 30", "answer_deadline_days = 10"),
        "t",
    )
    .unwrap();
    let r = request("2026-11-02T15:00:00Z");
    let c = Case::open(&r, r.header.time, &p).unwrap();
    assert_eq!(c.deadline(), ts("2026-11-12T23:59:59Z"));
}

#[test]
fn only_a_request_opens_a_case() {
    let (_, r) = opened();
    let resp = response(&r, "2026-10-06T09:00:00Z", Outcome::Fulfilled);
    let e = Case::open(&resp, resp.header.time, &kz_by()).unwrap_err();
    assert!(matches!(e, CaseError::NotARequest(MessageKind::Response)));
    assert_eq!(e.reject_code(), RejectCode::WrongState);
}

#[test]
fn unsolicited_information_opens_no_case_and_no_deadline() {
    let mut b = CaseBook::new();
    let u = unsolicited("kz.mvd", "by.mvd", T0);
    assert_eq!(
        ok(&mut b, &u),
        Applied::Recorded {
            kind: MessageKind::UnsolicitedInformation
        }
    );
    assert_eq!(b.cases().count(), 0);
    assert!(b.loose(&u.header.id).is_some());
    assert!(b.overdue(ts("2030-01-01T00:00:00Z")).is_empty());
    // An answer to it is an answer to no request.
    let fake = msg(
        "by.mvd",
        "kz.mvd",
        "2026-10-06T09:00:00Z",
        Some(u.header.id),
        response_body(PURPOSE, Outcome::Fulfilled),
    );
    assert_eq!(err(&mut b, &fake).reject_code(), RejectCode::UnknownCase);
}

// ------------------------------------------------------------ transitions

#[test]
fn received_to_in_progress_by_a_progress_notice_which_is_recorded() {
    let (mut b, r) = opened();
    let p = progress(&r, "2026-10-06T09:00:00Z");
    let Applied::Case(t) = ok(&mut b, &p) else {
        panic!()
    };
    assert_eq!(
        (t.from.clone(), t.to.clone(), t.by),
        (CaseState::Received, CaseState::InProgress, Side::Requested)
    );
    assert!(t.changed());
    let c = b.case(&r.header.id).unwrap();
    assert_eq!(c.progress().len(), 1);
    assert_eq!(c.progress()[0].message, p.header.id);
    assert_eq!(c.progress()[0].progress, ProgressKind::Delay);
    assert_eq!(c.progress()[0].expected_by, Some("2026-11-20".parse().unwrap()));
    // A second notice is recorded without a change of state.
    let Applied::Case(t) = ok(&mut b, &progress(&r, "2026-10-07T09:00:00Z")) else {
        panic!()
    };
    assert!(!t.changed());
    assert_eq!(b.case(&r.header.id).unwrap().progress().len(), 2);
}

#[test]
fn clarification_requested_then_clarified() {
    let (mut b, r) = opened();
    let q = clarification_request(&r, "2026-10-06T09:00:00Z");
    ok(&mut b, &q);
    assert_eq!(state(&b, &r), "clarification_requested");
    assert_eq!(b.case(&r.header.id).unwrap().open_clarifications().count(), 1);
    ok(&mut b, &clarification_answer(&q, "2026-10-07T09:00:00Z"));
    assert_eq!(state(&b, &r), "clarified");
    // A progress notice is recorded; it moves only a case just received
    // (it may have crossed the answer).
    ok(&mut b, &progress(&r, "2026-10-08T09:00:00Z"));
    assert_eq!(state(&b, &r), "clarified");
    assert_eq!(b.case(&r.header.id).unwrap().progress().len(), 1);
}

#[test]
fn with_two_open_clarifications_the_last_answer_clarifies() {
    let (mut b, r) = opened();
    let q1 = clarification_request(&r, "2026-10-06T09:00:00Z");
    let q2 = clarification_request(&r, "2026-10-06T10:00:00Z");
    ok(&mut b, &q1);
    ok(&mut b, &q2);
    ok(&mut b, &clarification_answer(&q2, "2026-10-07T09:00:00Z"));
    assert_eq!(state(&b, &r), "clarification_requested");
    ok(&mut b, &clarification_answer(&q1, "2026-10-07T10:00:00Z"));
    assert_eq!(state(&b, &r), "clarified");
}

#[test]
fn fulfilled_and_partially_fulfilled_answers() {
    for (outcome, code, partial) in [
        (Outcome::Fulfilled, "answered", false),
        (
            Outcome::PartiallyFulfilled {
                missing: items("Разрешение"),
            },
            "partially_answered",
            true,
        ),
    ] {
        let (mut b, r) = opened();
        ok(&mut b, &response(&r, "2026-10-20T09:00:00Z", outcome));
        assert_eq!(state(&b, &r), code);
        let c = b.case(&r.header.id).unwrap();
        assert_eq!(c.state(), &CaseState::Answered { partial });
        assert_eq!(
            c.tracked_deadline(),
            None,
            "an answered case has no running deadline"
        );
        assert!(!c.is_overdue(ts("2030-01-01T00:00:00Z")));
    }
}

#[test]
fn refusal_full_and_partial_keeps_its_grounds() {
    let (mut b, r) = opened();
    ok(
        &mut b,
        &response(
            &r,
            "2026-10-20T09:00:00Z",
            refused(
                vec![
                    RefusalGround::Security,
                    RefusalGround::PublicOrder,
                    RefusalGround::Security,
                ],
                None,
            ),
        ),
    );
    assert_eq!(
        b.case(&r.header.id).unwrap().state(),
        &CaseState::Refused {
            grounds: vec![RefusalGround::Security, RefusalGround::PublicOrder],
            partial: false
        }
    );
    assert_eq!(state(&b, &r), "refused");

    let (mut b, r) = opened();
    ok(
        &mut b,
        &response(
            &r,
            "2026-10-20T09:00:00Z",
            refused(vec![RefusalGround::ContradictsNationalLaw], Some(items("Адрес"))),
        ),
    );
    assert_eq!(state(&b, &r), "partially_refused");
}

#[test]
fn refusal_without_grounds_or_reason_and_postponement_without_reason_are_incomplete() {
    for outcome in [
        refused(vec![], None),
        Outcome::Refused {
            grounds: vec![RefusalGround::Security],
            reason: "  ".into(),
            partial: None,
        },
        refused(vec![RefusalGround::Security], Some(InformationItems::default())),
        Outcome::Postponed {
            reason: "".into(),
            conditions: None,
        },
        Outcome::PartiallyFulfilled {
            missing: InformationItems::default(),
        },
    ] {
        let (mut b, r) = opened();
        let e = err(&mut b, &response(&r, "2026-10-20T09:00:00Z", outcome));
        assert!(matches!(e, CaseError::Incomplete { .. }), "{e}");
        assert_eq!(e.reject_code(), RejectCode::InvalidMessage);
    }
}

#[test]
fn postponed_with_and_without_conditions_stays_open_then_answered() {
    let (mut b, r) = opened();
    ok(
        &mut b,
        &response(
            &r,
            "2026-10-10T09:00:00Z",
            postponed(Some("После завершения производства")),
        ),
    );
    let c = b.case(&r.header.id).unwrap();
    assert_eq!(c.state(), &CaseState::Postponed { conditional: true });
    assert!(c.tracked_deadline().is_some(), "the deadline keeps running");
    ok(&mut b, &response(&r, "2026-10-11T09:00:00Z", postponed(None)));
    assert_eq!(
        b.case(&r.header.id).unwrap().state(),
        &CaseState::Postponed { conditional: false }
    );
    ok(&mut b, &response(&r, "2026-10-20T09:00:00Z", Outcome::Fulfilled));
    assert_eq!(state(&b, &r), "answered");
}

#[test]
fn confidentiality_notice_then_proceed() {
    let (mut b, r) = opened();
    let n = confidentiality_notice(&r, "2026-10-06T09:00:00Z");
    ok(&mut b, &n);
    assert_eq!(
        b.case(&r.header.id).unwrap().state(),
        &CaseState::ConfidentialityNotified { notice: n.header.id }
    );
    // Nothing moves the case while the decision is awaited, but a progress notice is recorded.
    let e = err(&mut b, &response(&r, "2026-10-07T09:00:00Z", Outcome::Fulfilled));
    assert_eq!(e.reject_code(), RejectCode::WrongState);
    let e = err(&mut b, &clarification_request(&r, "2026-10-07T09:00:00Z"));
    assert_eq!(e.reject_code(), RejectCode::WrongState);
    let e = err(&mut b, &confidentiality_notice(&r, "2026-10-07T09:00:00Z"));
    assert_eq!(e.reject_code(), RejectCode::WrongState);
    ok(&mut b, &progress(&r, "2026-10-07T10:00:00Z"));
    assert_eq!(state(&b, &r), "confidentiality_notified");
    ok(
        &mut b,
        &confidentiality_decision(&n, "2026-10-08T09:00:00Z", ConfidentialityChoice::Proceed),
    );
    assert_eq!(state(&b, &r), "in_progress");
    ok(&mut b, &response(&r, "2026-10-20T09:00:00Z", Outcome::Fulfilled));
    assert_eq!(state(&b, &r), "answered");
}

#[test]
fn confidentiality_notice_then_withdraw_ends_the_case() {
    let (mut b, r) = opened();
    let n = confidentiality_notice(&r, "2026-10-06T09:00:00Z");
    ok(&mut b, &n);
    ok(
        &mut b,
        &confidentiality_decision(&n, "2026-10-08T09:00:00Z", ConfidentialityChoice::Withdraw),
    );
    let c = b.case(&r.header.id).unwrap();
    assert_eq!(c.state(), &CaseState::Withdrawn);
    assert_eq!(c.tracked_deadline(), None);
    // case_closed for anything that would move it; a progress notice that crossed the decision is recorded.
    let e = err(&mut b, &response(&r, "2026-10-09T09:00:00Z", Outcome::Fulfilled));
    assert_eq!(e.reject_code(), RejectCode::CaseClosed);
    ok(&mut b, &progress(&r, "2026-10-09T09:00:00Z"));
    assert_eq!(state(&b, &r), "withdrawn");
}

#[test]
fn close_only_after_the_end_and_then_nothing_is_accepted() {
    let (mut b, r) = opened();
    let e = b.close(&r.header.id, ts("2026-10-06T00:00:00Z")).unwrap_err();
    assert_eq!(e.reject_code(), RejectCode::WrongState);
    let q = clarification_request(&r, "2026-10-06T09:00:00Z");
    ok(&mut b, &q);
    ok(&mut b, &response(&r, "2026-10-20T09:00:00Z", Outcome::Fulfilled));
    let before = b.close(&r.header.id, ts("2026-10-21T00:00:00Z")).unwrap();
    assert_eq!(before, CaseState::Answered { partial: false });
    let c = b.case(&r.header.id).unwrap();
    assert_eq!(
        c.state(),
        &CaseState::Closed {
            ending: Ending::Answered { partial: false }
        }
    );
    assert_eq!(c.state().code(), "closed");
    assert_eq!(c.closed_at(), Some(ts("2026-10-21T00:00:00Z")));
    for m in [
        progress(&r, "2026-10-22T09:00:00Z"),
        clarification_answer(&q, "2026-10-22T09:00:00Z"),
        authenticity_query("kz.mvd", "by.mvd", &q, "2026-10-22T09:00:00Z"),
    ] {
        assert_eq!(err(&mut b, &m).reject_code(), RejectCode::CaseClosed);
    }
    // Withdrawn and refused cases close too.
    let (mut b, r) = opened();
    ok(
        &mut b,
        &response(
            &r,
            "2026-10-20T09:00:00Z",
            refused(vec![RefusalGround::Security], None),
        ),
    );
    b.close(&r.header.id, ts("2026-10-21T00:00:00Z")).unwrap();
    assert!(matches!(
        b.case(&r.header.id).unwrap().state(),
        CaseState::Closed {
            ending: Ending::Refused { .. }
        }
    ));
    let (mut b, r) = opened();
    let n = confidentiality_notice(&r, "2026-10-06T09:00:00Z");
    ok(&mut b, &n);
    ok(
        &mut b,
        &confidentiality_decision(&n, "2026-10-08T09:00:00Z", ConfidentialityChoice::Withdraw),
    );
    b.close(&r.header.id, ts("2026-10-21T00:00:00Z")).unwrap();
    assert_eq!(
        b.case(&r.header.id).unwrap().state(),
        &CaseState::Closed {
            ending: Ending::Withdrawn
        }
    );
}

#[test]
fn authenticity_query_and_confirmation_inside_a_case() {
    let (mut b, r) = opened();
    // The requested side doubts the request (Art. 9.5) and the requester confirms.
    let q = authenticity_query("by.mvd", "kz.mvd", &r, "2026-10-06T09:00:00Z");
    let Applied::Case(t) = ok(&mut b, &q) else {
        panic!()
    };
    assert!(!t.changed(), "a query does not move the case");
    assert_eq!(b.case(&r.header.id).unwrap().queries()[0].confirmed, None);
    let c = authenticity_confirmation(&q, "2026-10-07T09:00:00Z", true);
    ok(&mut b, &c);
    assert_eq!(b.case(&r.header.id).unwrap().queries()[0].confirmed, Some(true));
    assert_eq!(b.case_of(&c.header.id).unwrap().id(), r.header.id);
    // A second confirmation of the same query.
    let e = err(
        &mut b,
        &authenticity_confirmation(&q, "2026-10-08T09:00:00Z", false),
    );
    assert_eq!(e.reject_code(), RejectCode::AlreadyAnswered);
    // The requester doubts a response.
    let resp = response(&r, "2026-10-20T09:00:00Z", Outcome::Fulfilled);
    ok(&mut b, &resp);
    let q2 = authenticity_query("kz.mvd", "by.mvd", &resp, "2026-10-21T09:00:00Z");
    ok(&mut b, &q2);
    ok(
        &mut b,
        &authenticity_confirmation(&q2, "2026-10-22T09:00:00Z", false),
    );
    assert_eq!(b.case(&r.header.id).unwrap().queries()[1].confirmed, Some(false));
}

#[test]
fn authenticity_query_outside_a_case() {
    let mut b = CaseBook::new();
    let u = unsolicited("kz.mvd", "by.mvd", T0);
    ok(&mut b, &u);
    let q = authenticity_query("by.mvd", "kz.mvd", &u, "2026-10-06T09:00:00Z");
    ok(&mut b, &q);
    // The confirmation must come from the queried authority.
    let mut wrong = authenticity_confirmation(&q, "2026-10-07T09:00:00Z", true);
    wrong.header.from = authority("kz.mtszn");
    assert_eq!(err(&mut b, &wrong).reject_code(), RejectCode::NotAddressee);
    ok(
        &mut b,
        &authenticity_confirmation(&q, "2026-10-07T09:00:00Z", true),
    );
    assert_eq!(b.loose_queries().next().unwrap().confirmed, Some(true));
    let e = err(
        &mut b,
        &authenticity_confirmation(&q, "2026-10-08T09:00:00Z", true),
    );
    assert_eq!(e.reject_code(), RejectCode::AlreadyAnswered);
    // The query must go to the sender of the message in doubt.
    let q2 = authenticity_query("kz.mvd", "by.mvd", &u, "2026-10-06T09:00:00Z");
    assert_eq!(err(&mut b, &q2).reject_code(), RejectCode::NotAddressee);
}

// ------------------------------------------------------- refusal codes

#[test]
fn unknown_case_for_an_answer_to_an_unknown_request() {
    let (mut b, _) = opened();
    let other = request(T0); // never applied
    for m in [
        response(&other, "2026-10-06T09:00:00Z", Outcome::Fulfilled),
        clarification_request(&other, "2026-10-06T09:00:00Z"),
        progress(&other, "2026-10-06T09:00:00Z"),
        confidentiality_notice(&other, "2026-10-06T09:00:00Z"),
        clarification_answer(&other, "2026-10-06T09:00:00Z"),
        authenticity_query("by.mvd", "kz.mvd", &other, "2026-10-06T09:00:00Z"),
    ] {
        let e = err(&mut b, &m);
        assert!(
            matches!(e, CaseError::UnknownCase { reference, .. } if reference == other.header.id),
            "{e}"
        );
        assert_eq!(e.reject_code(), RejectCode::UnknownCase);
        assert!(e.to_string().contains(&other.header.id.to_string()));
    }
}

#[test]
fn already_answered_for_a_second_final_answer() {
    for first in [
        Outcome::Fulfilled,
        refused(vec![RefusalGround::Sovereignty], None),
        Outcome::PartiallyFulfilled { missing: items("x") },
    ] {
        let (mut b, r) = opened();
        ok(&mut b, &response(&r, "2026-10-20T09:00:00Z", first));
        for second in [
            response(&r, "2026-10-21T09:00:00Z", Outcome::Fulfilled),
            response(&r, "2026-10-21T09:00:00Z", postponed(None)),
            clarification_request(&r, "2026-10-21T09:00:00Z"),
            confidentiality_notice(&r, "2026-10-21T09:00:00Z"),
        ] {
            let e = err(&mut b, &second);
            assert_eq!(e.reject_code(), RejectCode::AlreadyAnswered, "{e}");
        }
    }
    // A second answer to a clarification request, a second decision on a notice.
    let (mut b, r) = opened();
    let q = clarification_request(&r, "2026-10-06T09:00:00Z");
    ok(&mut b, &q);
    ok(&mut b, &clarification_answer(&q, "2026-10-07T09:00:00Z"));
    let e = err(&mut b, &clarification_answer(&q, "2026-10-08T09:00:00Z"));
    assert_eq!(e.reject_code(), RejectCode::AlreadyAnswered);
    let n = confidentiality_notice(&r, "2026-10-09T09:00:00Z");
    ok(&mut b, &n);
    ok(
        &mut b,
        &confidentiality_decision(&n, "2026-10-10T09:00:00Z", ConfidentialityChoice::Proceed),
    );
    let e = err(
        &mut b,
        &confidentiality_decision(&n, "2026-10-11T09:00:00Z", ConfidentialityChoice::Withdraw),
    );
    assert_eq!(e.reject_code(), RejectCode::AlreadyAnswered);
}

#[test]
fn not_addressee_for_an_answer_from_an_authority_that_was_not_asked() {
    let (mut b, r) = opened();
    // by.gpk was not asked (the request went to by.mvd).
    let mut m = response(&r, "2026-10-20T09:00:00Z", Outcome::Fulfilled);
    m.header.from = authority("by.gpk");
    let e = err(&mut b, &m);
    assert_eq!(e.reject_code(), RejectCode::NotAddressee);
    assert!(e.to_string().contains("by.gpk"), "{e}");
    // An answer addressed to another authority than the requester.
    let mut m = response(&r, "2026-10-20T09:00:00Z", Outcome::Fulfilled);
    m.header.to = authority("kz.mtszn");
    assert_eq!(err(&mut b, &m).reject_code(), RejectCode::NotAddressee);
    // The requester cannot answer its own request, nor the requested side answer a clarification.
    let m = msg(
        "kz.mvd",
        "by.mvd",
        "2026-10-20T09:00:00Z",
        Some(r.header.id),
        response_body(PURPOSE, Outcome::Fulfilled),
    );
    assert_eq!(err(&mut b, &m).reject_code(), RejectCode::NotAddressee);
    let q = clarification_request(&r, "2026-10-06T09:00:00Z");
    ok(&mut b, &q);
    let mut a = clarification_answer(&q, "2026-10-07T09:00:00Z");
    std::mem::swap(&mut a.header.from, &mut a.header.to);
    assert_eq!(err(&mut b, &a).reject_code(), RejectCode::NotAddressee);
    // An authenticity query must go to the sender of the doubted message.
    let q = authenticity_query("kz.mvd", "by.mvd", &r, "2026-10-08T09:00:00Z");
    assert_eq!(err(&mut b, &q).reject_code(), RejectCode::NotAddressee);
}

#[test]
fn wrong_state_for_messages_that_do_not_fit() {
    let (mut b, r) = opened();
    let q = clarification_request(&r, "2026-10-06T09:00:00Z");
    ok(&mut b, &q);
    // A confidentiality decision without a pending notice.
    let fake_notice = confidentiality_notice(&r, "2026-10-06T10:00:00Z");
    let mut d = confidentiality_decision(
        &fake_notice,
        "2026-10-07T09:00:00Z",
        ConfidentialityChoice::Proceed,
    );
    d.header.in_reply_to = Some(q.header.id);
    assert_eq!(err(&mut b, &d).reject_code(), RejectCode::WrongState);
    // A clarification answer that answers the request itself.
    let a = clarification_answer(&r, "2026-10-07T09:00:00Z");
    assert_eq!(err(&mut b, &a).reject_code(), RejectCode::WrongState);
    // A response that answers the clarification request instead of the request.
    let m = msg(
        "by.mvd",
        "kz.mvd",
        "2026-10-07T09:00:00Z",
        Some(q.header.id),
        response_body(PURPOSE, Outcome::Fulfilled),
    );
    assert_eq!(err(&mut b, &m).reject_code(), RejectCode::WrongState);
    // An authenticity confirmation without a query.
    let m = msg(
        "kz.mvd",
        "by.mvd",
        "2026-10-07T09:00:00Z",
        Some(q.header.id),
        MessageBody::AuthenticityConfirmation(AuthenticityConfirmation {
            confirmed: true,
            details: None,
        }),
    );
    assert_eq!(err(&mut b, &m).reject_code(), RejectCode::WrongState);
    // A consent decision that answers a request case message.
    let m = msg(
        "by.mvd",
        "kz.mvd",
        "2026-10-07T09:00:00Z",
        Some(r.header.id),
        MessageBody::ConsentDecision(ConsentDecision {
            granted: true,
            conditions: None,
            reason: None,
        }),
    );
    assert_eq!(err(&mut b, &m).reject_code(), RejectCode::WrongState);
}

#[test]
fn purpose_mismatch_for_a_response_without_the_request_purpose() {
    let (mut b, r) = opened();
    let m = msg(
        "by.mvd",
        "kz.mvd",
        "2026-10-20T09:00:00Z",
        Some(r.header.id),
        response_body("Другая цель.", Outcome::Fulfilled),
    );
    let e = err(&mut b, &m);
    assert_eq!(e.reject_code(), RejectCode::PurposeMismatch);
    assert!(
        !e.to_string().contains("Другая"),
        "no message text in errors: {e}"
    );
    // Surrounding blanks do not matter.
    let m = msg(
        "by.mvd",
        "kz.mvd",
        "2026-10-20T09:00:00Z",
        Some(r.header.id),
        response_body(&format!("  {PURPOSE}\n"), Outcome::Fulfilled),
    );
    ok(&mut b, &m);
}

#[test]
fn agreement_not_in_force_and_terminated() {
    let text = std::fs::read_to_string(common::repo().join("deploy/profiles/kz-by-2019.toml")).unwrap();
    let p = Profile::from_toml_str(
        &text.replace(
            "# termination_notice = \"YYYY-MM-DD\"",
            "termination_notice = \"2026-05-01\"",
        ),
        "t",
    )
    .unwrap();
    let mut b = CaseBook::new();
    let r = request("2026-10-31T23:59:59Z");
    let e = b
        .apply(&r, r.header.time, ts("2026-11-01T00:00:00Z"), &p)
        .unwrap_err();
    assert_eq!(e.reject_code(), RejectCode::AgreementTerminated, "{e}");
    assert!(e.to_string().contains("2026-11-01"), "{e}");
    let early = request("2020-12-02T12:00:00Z");
    let e = b
        .apply(&early, early.header.time, early.header.time, &p)
        .unwrap_err();
    assert_eq!(e.reject_code(), RejectCode::AgreementNotInForce, "{e}");
    assert!(e.to_string().contains("2020-12-03"), "{e}");
    // Within the six months after the notice, still in force.
    b.apply(&r, r.header.time, r.header.time, &p).unwrap();
}

#[test]
fn another_agreement_than_the_case_or_profile_is_invalid() {
    let (mut b, r) = opened();
    let mut m = response(&r, "2026-10-20T09:00:00Z", Outcome::Fulfilled);
    m.header.agreement = AgreementId::new("kz-am-2024").unwrap();
    let e = b.apply(&m, m.header.time, m.header.time, &kz_by()).unwrap_err();
    assert_eq!(e.reject_code(), RejectCode::InvalidMessage);
    let case = b.case(&r.header.id).unwrap().clone();
    let e = case.check(&m).unwrap_err();
    assert!(matches!(e, CaseError::AgreementMismatch { .. }));
}

#[test]
fn applying_the_same_message_twice_is_a_duplicate() {
    let (mut b, r) = opened();
    assert_eq!(ok(&mut b, &r), Applied::Duplicate);
    let p = progress(&r, "2026-10-06T09:00:00Z");
    ok(&mut b, &p);
    let before = b.clone();
    assert_eq!(ok(&mut b, &p), Applied::Duplicate);
    assert_eq!(b, before);
    // On the case itself too.
    let mut c = b.case(&r.header.id).unwrap().clone();
    let t = c.apply(&p).unwrap();
    assert!(!t.changed());
}

#[test]
fn check_does_not_change_the_book() {
    let (b, r) = opened();
    let m = response(&r, "2026-10-20T09:00:00Z", Outcome::Fulfilled);
    let before = b.clone();
    let Applied::Case(t) = b.check(&m, m.header.time, m.header.time, &kz_by()).unwrap() else {
        panic!()
    };
    assert_eq!(t.to, CaseState::Answered { partial: false });
    assert_eq!(b, before);
}

// ------------------------------------------------------------ crossings

#[test]
fn a_clarification_answer_crossing_a_final_answer_is_recorded() {
    let (mut b, r) = opened();
    let q = clarification_request(&r, "2026-10-06T09:00:00Z");
    ok(&mut b, &q);
    ok(&mut b, &response(&r, "2026-10-07T09:00:00Z", Outcome::Fulfilled));
    let Applied::Case(t) = ok(&mut b, &clarification_answer(&q, "2026-10-07T09:00:01Z")) else {
        panic!()
    };
    assert!(!t.changed());
    assert_eq!(state(&b, &r), "answered");
    assert_eq!(b.case(&r.header.id).unwrap().open_clarifications().count(), 0);
}

/// Both orders of two crossing messages end in the same state.
#[test]
fn crossing_messages_commute() {
    let (base, r) = opened();
    let q = clarification_request(&r, "2026-10-06T09:00:00Z");
    let mut base = base;
    ok(&mut base, &q);
    let answer = clarification_answer(&q, "2026-10-07T09:00:00Z");
    for s_msg in [
        response(&r, "2026-10-07T09:00:00Z", Outcome::Fulfilled),
        response(&r, "2026-10-07T09:00:00Z", postponed(None)),
        confidentiality_notice(&r, "2026-10-07T09:00:00Z"),
        clarification_request(&r, "2026-10-07T09:00:00Z"),
        progress(&r, "2026-10-07T09:00:00Z"),
    ] {
        let mut a = base.clone();
        ok(&mut a, &answer);
        ok(&mut a, &s_msg);
        let mut b = base.clone();
        ok(&mut b, &s_msg);
        ok(&mut b, &answer);
        let (ca, cb) = (a.case(&r.header.id).unwrap(), b.case(&r.header.id).unwrap());
        assert_eq!(ca.state(), cb.state(), "{}", s_msg.kind());
        assert_eq!(
            ca.open_clarifications().collect::<Vec<_>>(),
            cb.open_clarifications().collect::<Vec<_>>()
        );
    }
}

// ------------------------------------------------------------- deadlines

#[test]
fn overdue_and_due_within_with_injected_time() {
    let mut b = CaseBook::new();
    let r1 = request("2026-10-01T08:00:00Z"); // due 2026-10-31T23:59:59Z
    let r2 = request("2026-10-20T08:00:00Z"); // due 2026-11-19T23:59:59Z
    let r3 = request("2026-10-02T08:00:00Z"); // answered in time
    for r in [&r1, &r2, &r3] {
        ok(&mut b, r);
    }
    ok(&mut b, &response(&r3, "2026-10-10T08:00:00Z", Outcome::Fulfilled));
    let ids = |v: Vec<&Case>| v.into_iter().map(Case::id).collect::<Vec<_>>();
    assert!(
        b.overdue(ts("2026-10-31T23:59:59Z")).is_empty(),
        "due by the end of day 30"
    );
    assert_eq!(ids(b.overdue(ts("2026-11-01T00:00:00Z"))), vec![r1.header.id]);
    assert_eq!(
        ids(b.overdue(ts("2026-11-20T00:00:00Z"))),
        vec![r1.header.id, r2.header.id],
        "earliest deadline first"
    );
    let week = 7 * 86_400;
    assert_eq!(
        ids(b.due_within(ts("2026-10-25T00:00:00Z"), week)),
        vec![r1.header.id]
    );
    assert_eq!(
        ids(b.due_within(ts("2026-11-13T00:00:00Z"), week)),
        vec![r2.header.id]
    );
    assert!(b.due_within(ts("2026-10-01T00:00:00Z"), week).is_empty());
    // A postponed case stays on the lists; a refused one leaves them.
    ok(&mut b, &response(&r1, "2026-10-30T08:00:00Z", postponed(None)));
    assert_eq!(ids(b.overdue(ts("2026-11-01T00:00:00Z"))), vec![r1.header.id]);
    ok(
        &mut b,
        &response(
            &r1,
            "2026-11-02T08:00:00Z",
            refused(vec![RefusalGround::Security], None),
        ),
    );
    assert!(b.overdue(ts("2026-11-03T00:00:00Z")).is_empty());
}

// --------------------------------------------------- Art. 2 renamings

#[test]
fn a_renamed_authority_answers_under_its_new_id() {
    let (mut b, r) = opened();
    b.rename_authority(&authority("by.mvd"), &authority("by.mvd-new"));
    let c = b.case(&r.header.id).unwrap();
    assert_eq!(c.requested(), &authority("by.mvd-new"));
    assert_eq!(
        c.side_of(&authority("by.mvd")),
        Some(Side::Requested),
        "the old id stays valid"
    );
    assert_eq!(b.canonical(&authority("by.mvd")), &authority("by.mvd-new"));
    let mut m = response(&r, "2026-10-20T09:00:00Z", Outcome::Fulfilled);
    m.header.from = authority("by.mvd-new");
    ok(&mut b, &m);
    assert_eq!(state(&b, &r), "answered");
}

// ---------------------------------------------------------- persistence

#[test]
fn cases_and_books_round_trip_through_cbor_and_json() {
    let (mut b, r) = opened();
    let q = clarification_request(&r, "2026-10-06T09:00:00Z");
    ok(&mut b, &q);
    ok(&mut b, &progress(&r, "2026-10-06T10:00:00Z"));
    ok(
        &mut b,
        &authenticity_query("by.mvd", "kz.mvd", &r, "2026-10-06T11:00:00Z"),
    );
    ok(
        &mut b,
        &response(
            &r,
            "2026-10-07T09:00:00Z",
            refused(vec![RefusalGround::Security], Some(items("x"))),
        ),
    );
    let u = unsolicited("by.mvd", "kz.mvd", T0);
    ok(&mut b, &u);
    b.rename_authority(&authority("by.gpk"), &authority("by.gpk2"));
    let bytes = b.to_cbor().unwrap();
    assert_eq!(CaseBook::from_cbor(&bytes).unwrap(), b);
    assert_eq!(
        bytes,
        CaseBook::from_cbor(&bytes).unwrap().to_cbor().unwrap(),
        "deterministic"
    );
    let c = b.case(&r.header.id).unwrap();
    assert_eq!(&Case::from_cbor(&c.to_cbor().unwrap()).unwrap(), c);
    let json = serde_json::to_string(c).unwrap();
    assert_eq!(&serde_json::from_str::<Case>(&json).unwrap(), c);
    assert!(!json.contains("Проверка"), "no message text in the case: {json}");
    // Truncated bytes are refused, not a panic.
    assert!(CaseBook::from_cbor(&bytes[..bytes.len() / 2]).is_err());
    // A destroyed case is forgotten with its index.
    assert!(b.forget_case(&r.header.id).is_some());
    assert!(b.case_of(&q.header.id).is_none());
}

#[test]
fn state_codes_are_distinct_and_stable() {
    let states = [
        CaseState::Received,
        CaseState::InProgress,
        CaseState::ClarificationRequested,
        CaseState::Clarified,
        CaseState::Postponed { conditional: false },
        CaseState::ConfidentialityNotified { notice: fresh_id() },
        CaseState::Answered { partial: false },
        CaseState::Answered { partial: true },
        CaseState::Refused {
            grounds: vec![],
            partial: false,
        },
        CaseState::Refused {
            grounds: vec![],
            partial: true,
        },
        CaseState::Withdrawn,
        CaseState::Closed {
            ending: Ending::Withdrawn,
        },
    ];
    let codes: std::collections::BTreeSet<&str> = states.iter().map(CaseState::code).collect();
    assert_eq!(codes.len(), states.len());
    let open: Vec<&str> = states
        .iter()
        .filter(|s| s.is_open())
        .map(CaseState::code)
        .collect();
    assert_eq!(
        open,
        [
            "received",
            "in_progress",
            "clarification_requested",
            "clarified",
            "postponed",
            "confidentiality_notified"
        ]
    );
}

// ------------------------------------------------------------ both sides

/// One step of a scripted exchange: which message to make from what is on record.
#[derive(Clone, Debug)]
enum Step {
    Response(u8),
    ClarificationRequest,
    ClarificationAnswer(usize),
    Progress,
    Notice,
    Decision(usize, bool),
    Query(usize, bool),
    Confirmation(usize),
    Stray(u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u8..6).prop_map(Step::Response),
        Just(Step::ClarificationRequest),
        (0usize..4).prop_map(Step::ClarificationAnswer),
        Just(Step::Progress),
        Just(Step::Notice),
        ((0usize..3), any::<bool>()).prop_map(|(i, w)| Step::Decision(i, w)),
        ((0usize..8), any::<bool>()).prop_map(|(i, s)| Step::Query(i, s)),
        (0usize..4).prop_map(Step::Confirmation),
        (0u8..4).prop_map(Step::Stray),
    ]
}

/// Builds the message for a step from what has been sent so far.
fn make(step: &Step, r: &Message, sent: &[Message], n: usize) -> Message {
    let t = ts("2026-10-06T00:00:00Z").plus_secs(60 * n as i64).to_string();
    let pick = |kind: MessageKind, i: usize| -> Option<&Message> {
        let v: Vec<&Message> = sent.iter().filter(|m| m.kind() == kind).collect();
        (!v.is_empty()).then(|| v[i % v.len()])
    };
    match step {
        Step::Response(k) => response(
            r,
            &t,
            match k {
                0 => Outcome::Fulfilled,
                1 => Outcome::PartiallyFulfilled { missing: items("x") },
                2 => refused(vec![RefusalGround::Security], None),
                3 => refused(vec![RefusalGround::PublicOrder], Some(items("y"))),
                4 => postponed(Some("условия")),
                _ => refused(vec![], None),
            },
        ),
        Step::ClarificationRequest => clarification_request(r, &t),
        Step::ClarificationAnswer(i) => {
            clarification_answer(pick(MessageKind::ClarificationRequest, *i).unwrap_or(r), &t)
        }
        Step::Progress => progress(r, &t),
        Step::Notice => confidentiality_notice(r, &t),
        Step::Decision(i, withdraw) => confidentiality_decision(
            pick(MessageKind::ConfidentialityNotice, *i).unwrap_or(r),
            &t,
            if *withdraw {
                ConfidentialityChoice::Withdraw
            } else {
                ConfidentialityChoice::Proceed
            },
        ),
        Step::Query(i, swap) => {
            let about = if sent.is_empty() { r } else { &sent[i % sent.len()] };
            let (mut from, mut to) = (about.header.to.to_string(), about.header.from.to_string());
            if *swap {
                std::mem::swap(&mut from, &mut to);
            }
            authenticity_query(&from, &to, about, &t)
        }
        Step::Confirmation(i) => authenticity_confirmation(
            pick(MessageKind::AuthenticityQuery, *i).unwrap_or(r),
            &t,
            i % 2 == 0,
        ),
        Step::Stray(k) => {
            let mut m = response(r, &t, Outcome::Fulfilled);
            match k {
                0 => m.header.from = authority("by.gpk"),
                1 => m.header.in_reply_to = Some(fresh_id()),
                2 => m.header.agreement = AgreementId::new("kz-am-2024").unwrap(),
                _ => std::mem::swap(&mut m.header.from, &mut m.header.to),
            }
            m
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random message sequences never panic, the requester's and the
    /// requested gateway's books agree after every message (same result,
    /// same state), a refused message changes nothing, and a book
    /// survives CBOR.
    #[test]
    fn both_sides_agree_on_random_sequences(steps in proptest::collection::vec(step(), 0..24)) {
        let p = kz_by();
        let r = request(T0);
        let received = ts("2026-10-05T09:00:03Z");
        let mut requester = CaseBook::new();
        let mut requested = CaseBook::new();
        requested.apply(&r, received, received, &p).unwrap();
        requester.apply(&r, received, received, &p).unwrap();
        let mut sent: Vec<Message> = Vec::new();
        for (n, s) in steps.iter().enumerate() {
            let m = make(s, &r, &sent, n);
            let now = m.header.time.plus_secs(1);
            // The receiver decides; the sender applies what was accepted.
            let before = requested.clone();
            // The dry run decides exactly as the real one.
            let checked = requested.check(&m, now, now, &p);
            prop_assert_eq!(&requested, &before);
            let a = requested.apply(&m, now, now, &p);
            prop_assert_eq!(&checked, &a);
            let b = requester.apply(&m, now, now, &p);
            prop_assert_eq!(&a, &b);
            if a.is_ok() {
                sent.push(m);
            } else {
                prop_assert_eq!(&requested, &before);
            }
            prop_assert_eq!(
                requested.case(&r.header.id).unwrap(),
                requester.case(&r.header.id).unwrap()
            );
        }
        let c = requested.case(&r.header.id).unwrap();
        prop_assert!(!c.is_overdue(c.deadline()));
        prop_assert_eq!(c.history().len(), 1 + sent.iter().filter(|m| requested.case_of(&m.header.id).is_some()).count());
        prop_assert_eq!(CaseBook::from_cbor(&requested.to_cbor().unwrap()).unwrap(), requested.clone());
        // Kept record by record (as konvertd keeps it), the book comes back
        // whole, with the index of messages to cases rebuilt.
        for book in [&requested, &requester] {
            let rebuilt = CaseBook::from_parts(
                book.cases().cloned(),
                book.loose_messages().map(|(id, m)| (*id, m.clone())),
                book.loose_queries().cloned(),
                book.decided().copied(),
                book.renamed().clone(),
            );
            prop_assert_eq!(&rebuilt, book);
        }
    }

    /// Messages crossing in flight: each side applies its own message when
    /// the peer accepted it, and the peer's on arrival, in any
    /// interleaving; both end in the same state. As the gateway does, each
    /// side has at most one message of a case in flight (the next one is
    /// checked after the previous one's receipt).
    #[test]
    fn both_sides_agree_when_messages_cross(
        steps in proptest::collection::vec((step(), any::<bool>()), 0..24),
        order in proptest::collection::vec(any::<bool>(), 24),
    ) {
        let p = kz_by();
        let r = request(T0);
        let received = ts("2026-10-05T09:00:03Z");
        // Index 0: kz.mvd (requester), 1: by.mvd (requested).
        let mut books = [CaseBook::new(), CaseBook::new()];
        for b in &mut books {
            b.apply(&r, received, received, &p).unwrap();
        }
        let mut in_flight: [Option<Message>; 2] = [None, None];
        let mut sent: Vec<Message> = Vec::new();
        let now = ts("2026-10-06T00:00:00Z");
        let side_of = |m: &Message| usize::from(m.header.from != authority("kz.mvd"));
        for (n, (s, deliver)) in steps.iter().enumerate() {
            if *deliver {
                let i = usize::from(order[n]);
                if let Some(m) = in_flight[i].take() {
                    prop_assert!(books[i].apply(&m, now, now, &p).is_ok(), "the sender applies what the peer accepted");
                }
            }
            let m = make(s, &r, &sent, n);
            let i = side_of(&m);
            if let Some(prev) = in_flight[i].take() {
                prop_assert!(books[i].apply(&prev, now, now, &p).is_ok());
            }
            // The sender checks first (refused locally before sealing).
            if books[i].check(&m, now, now, &p).is_err() {
                continue;
            }
            if books[1 - i].apply(&m, now, now, &p).is_ok() {
                sent.push(m.clone());
                in_flight[i] = Some(m);
            }
        }
        for i in 0..2 {
            if let Some(m) = in_flight[i].take() {
                prop_assert!(books[i].apply(&m, now, now, &p).is_ok());
            }
        }
        let (a, b) = (books[0].case(&r.header.id).unwrap(), books[1].case(&r.header.id).unwrap());
        prop_assert_eq!(a.state(), b.state());
        prop_assert_eq!(a.open_clarifications().collect::<Vec<_>>(), b.open_clarifications().collect::<Vec<_>>());
        prop_assert_eq!(a.progress().len(), b.progress().len());
        prop_assert_eq!(a.queries().len(), b.queries().len());
    }
}
