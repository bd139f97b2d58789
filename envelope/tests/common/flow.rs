//! Builders for the messages of a request case (workflow, consent and roster tests).
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};

use konvert_envelope::model::*;

use super::authority;

pub const PURPOSE: &str = "Проверка сведений, представленных при оформлении документа.";

/// A fresh, unique message id.
pub fn fresh_id() -> Id {
    static N: AtomicU64 = AtomicU64::new(1);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let mut b = [0u8; 16];
    b[0] = 0x01;
    b[6] = 0x70; // version 7
    b[8] = 0x80; // variant
    b[9..16].copy_from_slice(&n.to_be_bytes()[1..8]);
    Id::from_bytes(b)
}

pub fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

/// A message from `from` to `to` at `time`, answering `reply`.
pub fn msg(from: &str, to: &str, time: &str, reply: Option<Id>, body: MessageBody) -> Message {
    msg_under("kz-by-2019", from, to, time, reply, body)
}

pub fn msg_under(
    agreement: &str,
    from: &str,
    to: &str,
    time: &str,
    reply: Option<Id>,
    body: MessageBody,
) -> Message {
    Message {
        header: MessageHeader {
            id: fresh_id(),
            time: ts(time),
            agreement: AgreementId::new(agreement).unwrap(),
            from: authority(from),
            to: authority(to),
            in_reply_to: reply,
        },
        body,
    }
}

pub fn items(text: &str) -> InformationItems {
    InformationItems {
        fields: vec![PersonField::Residence],
        text: Some(text.into()),
    }
}

pub fn request_body(purpose: &str) -> MessageBody {
    MessageBody::Request(Request {
        substance: "Сведения о месте жительства.".into(),
        purpose: purpose.into(),
        justification: "Заявление.".into(),
        categories: vec![PersonCategory::TemporarilyStaying],
        persons: Vec::new(),
        requested: items("Адрес"),
        other_information: None,
        attachments: Vec::new(),
    })
}

/// kz.mvd asks by.mvd.
pub fn request(time: &str) -> Message {
    msg("kz.mvd", "by.mvd", time, None, request_body(PURPOSE))
}

pub fn response_body(purpose: &str, outcome: Outcome) -> MessageBody {
    MessageBody::Response(Response {
        purpose: purpose.into(),
        outcome,
        persons: Vec::new(),
        information: Some("Сведения.".into()),
        attachments: Vec::new(),
    })
}

/// by.mvd answers `req`.
pub fn response(req: &Message, time: &str, outcome: Outcome) -> Message {
    msg(
        "by.mvd",
        "kz.mvd",
        time,
        Some(req.header.id),
        response_body(PURPOSE, outcome),
    )
}

pub fn refused(grounds: Vec<RefusalGround>, partial: Option<InformationItems>) -> Outcome {
    Outcome::Refused {
        grounds,
        reason: "Противоречит законодательству.".into(),
        partial,
    }
}

pub fn postponed(conditions: Option<&str>) -> Outcome {
    Outcome::Postponed {
        reason: "Идёт уголовное производство.".into(),
        conditions: conditions.map(Into::into),
    }
}

pub fn clarification_request(req: &Message, time: &str) -> Message {
    msg(
        "by.mvd",
        "kz.mvd",
        time,
        Some(req.header.id),
        MessageBody::ClarificationRequest(ClarificationRequest {
            questions: vec!["Дата въезда?".into()],
        }),
    )
}

pub fn clarification_answer(q: &Message, time: &str) -> Message {
    msg(
        "kz.mvd",
        "by.mvd",
        time,
        Some(q.header.id),
        MessageBody::ClarificationAnswer(ClarificationAnswer {
            answers: vec!["12.03.2026".into()],
            persons: Vec::new(),
            attachments: Vec::new(),
        }),
    )
}

pub fn progress(req: &Message, time: &str) -> Message {
    msg(
        "by.mvd",
        "kz.mvd",
        time,
        Some(req.header.id),
        MessageBody::ProgressNotice(ProgressNotice {
            progress: ProgressKind::Delay,
            circumstances: "Запрос в архив.".into(),
            expected_by: Some("2026-11-20".parse().unwrap()),
        }),
    )
}

pub fn confidentiality_notice(req: &Message, time: &str) -> Message {
    msg(
        "by.mvd",
        "kz.mvd",
        time,
        Some(req.header.id),
        MessageBody::ConfidentialityNotice(ConfidentialityNotice {
            explanation: "Потребуется опрос третьих лиц.".into(),
        }),
    )
}

pub fn confidentiality_decision(notice: &Message, time: &str, decision: ConfidentialityChoice) -> Message {
    msg(
        "kz.mvd",
        "by.mvd",
        time,
        Some(notice.header.id),
        MessageBody::ConfidentialityDecision(ConfidentialityDecision {
            decision,
            comment: None,
        }),
    )
}

/// An authenticity query from `from` to `to` about `about`.
pub fn authenticity_query(from: &str, to: &str, about: &Message, time: &str) -> Message {
    msg(
        from,
        to,
        time,
        None,
        MessageBody::AuthenticityQuery(AuthenticityQuery {
            message: about.header.id,
            doubt: "Подпись?".into(),
        }),
    )
}

pub fn authenticity_confirmation(query: &Message, time: &str, confirmed: bool) -> Message {
    let h = &query.header;
    msg(
        h.to.as_str(),
        h.from.as_str(),
        time,
        Some(h.id),
        MessageBody::AuthenticityConfirmation(AuthenticityConfirmation {
            confirmed,
            details: (!confirmed).then(|| "Не направлялся.".into()),
        }),
    )
}

pub fn unsolicited(from: &str, to: &str, time: &str) -> Message {
    msg(
        from,
        to,
        time,
        None,
        MessageBody::UnsolicitedInformation(UnsolicitedInformation {
            topic: Topic::ViolationsAndChannels,
            summary: "Канал незаконной миграции.".into(),
            categories: Vec::new(),
            persons: Vec::new(),
            attachments: Vec::new(),
        }),
    )
}

pub fn consent_request(
    holder: &str,
    provider: &str,
    data: &Message,
    time: &str,
    scope: ConsentScope,
) -> Message {
    msg_under(
        data.header.agreement.as_str(),
        holder,
        provider,
        time,
        None,
        MessageBody::ConsentRequest(ConsentRequest {
            message: data.header.id,
            scope,
            justification: "Необходимо для проверки.".into(),
        }),
    )
}

pub fn consent_decision(req: &Message, time: &str, granted: bool) -> Message {
    let h = &req.header;
    msg_under(
        h.agreement.as_str(),
        h.to.as_str(),
        h.from.as_str(),
        time,
        Some(h.id),
        MessageBody::ConsentDecision(ConsentDecision {
            granted,
            conditions: None,
            reason: (!granted).then(|| "Не согласовано.".into()),
        }),
    )
}
