//! The message model and profile validation: one test per rule, the
//! guarantee that error texts carry no personal data, and property tests of
//! the JSON and CBOR forms.

use konvert_envelope::model::{
    Attachment, AuthorityId, Citizenship, CountryCode, Digest, DocumentKind, Id, IdentityDocument, Message,
    MessageBody, MessageKind, Name, Outcome, Person, PersonCategory, PersonField, Sex, Timestamp,
};
use konvert_envelope::profile::{Profile, ProfileError, ValidationErrors, ValidationRule};
use proptest::prelude::*;

const KZ_BY: &str = include_str!("../../deploy/profiles/kz-by-2019.toml");
const REQUEST: &str = include_str!("../../docs/examples/request.json");
const RESPONSE: &str = include_str!("../../docs/examples/response.json");
const UNSOLICITED: &str = include_str!("../../docs/examples/unsolicited_information.json");
const ROSTER: &str = include_str!("../../docs/examples/directory_update.json");

fn profile() -> Profile {
    Profile::from_toml_str(KZ_BY, "kz-by-2019.toml").expect("profile")
}

/// The kz-by-2019 profile with one piece of its text replaced.
fn profile_with(from: &str, to: &str) -> Profile {
    assert!(KZ_BY.contains(from), "profile text has no {from:?}");
    Profile::from_toml_str(&KZ_BY.replacen(from, to, 1), "edited.toml").expect("edited profile")
}

fn example(text: &str) -> Message {
    serde_json::from_str(text).expect("example")
}

fn json_value(text: &str) -> serde_json::Value {
    serde_json::from_str(text).expect("JSON")
}

fn now_for(m: &Message) -> Timestamp {
    m.header.time.plus_secs(60)
}

fn ts(s: &str) -> Timestamp {
    s.parse().expect("timestamp")
}

fn errors(p: &Profile, m: &Message) -> ValidationErrors {
    p.validate(m, now_for(m)).expect_err("message should be refused")
}

fn assert_rule(errs: &ValidationErrors, rule: ValidationRule, path: &str) {
    assert!(errs.has_at(rule, path), "expected {rule} at {path}, got:\n{errs}");
}

fn request() -> Message {
    example(REQUEST)
}

fn request_mut(m: &mut Message) -> &mut konvert_envelope::model::Request {
    match &mut m.body {
        MessageBody::Request(r) => r,
        _ => panic!("not a request"),
    }
}

// ---- parsing: Art. 5 and Art. 6 are closed lists ----

#[test]
fn field_outside_art6_is_refused_at_parse_naming_it() {
    let mut v = json_value(REQUEST);
    v["body"]["content"]["persons"][0]["religion"] = "—".into();
    let e = serde_json::from_value::<Message>(v).expect_err("religion is not an Art. 6 field");
    assert!(e.to_string().contains("unknown field `religion`"), "{e}");
}

#[test]
fn unknown_field_in_body_is_refused() {
    let mut v = json_value(REQUEST);
    v["body"]["content"]["priority"] = "high".into();
    let e = serde_json::from_value::<Message>(v).expect_err("unknown body field");
    assert!(e.to_string().contains("priority"), "{e}");
}

#[test]
fn category_outside_art5_is_refused_at_parse() {
    let mut v = json_value(REQUEST);
    v["body"]["content"]["categories"] = serde_json::json!(["refugee"]);
    let e = serde_json::from_value::<Message>(v).expect_err("refugee is not an Art. 5 category");
    assert!(e.to_string().contains("refugee"), "{e}");
}

#[test]
fn requested_field_outside_art6_is_refused_at_parse() {
    let mut v = json_value(REQUEST);
    v["body"]["content"]["requested"]["fields"] = serde_json::json!(["ethnicity"]);
    assert!(serde_json::from_value::<Message>(v).is_err());
}

// ---- validation, one rule at a time ----

#[test]
fn examples_are_valid_before_editing() {
    let p = profile();
    for m in [
        request(),
        example(RESPONSE),
        example(UNSOLICITED),
        example(ROSTER),
    ] {
        p.validate(&m, now_for(&m)).expect("valid example");
    }
}

#[test]
fn category_not_allowed_by_profile() {
    let p = profile_with("    \"expelled\",                         # 5(5)\n", "");
    let mut m = request();
    request_mut(&mut m).categories = vec![PersonCategory::TemporarilyStaying, PersonCategory::Expelled];
    assert_rule(
        &errors(&p, &m),
        ValidationRule::CategoryNotAllowed,
        "body.content.categories[1]",
    );
}

#[test]
fn person_field_not_allowed_by_profile() {
    let p = profile_with("    \"fingerprint_card\",         # if any\n", "");
    let errs = errors(&p, &example(RESPONSE));
    assert_rule(
        &errs,
        ValidationRule::FieldNotAllowed,
        "body.content.persons[0].fingerprint_card",
    );
}

#[test]
fn requested_field_not_allowed_by_profile() {
    let p = profile_with("    \"administrative_liability\",\n", "");
    let errs = errors(&p, &request());
    assert_rule(
        &errs,
        ValidationRule::FieldNotAllowed,
        "body.content.requested.fields[2]",
    );
}

#[test]
fn request_needs_substance_purpose_justification_category_and_what_is_asked() {
    let p = profile();
    let mut m = request();
    let r = request_mut(&mut m);
    r.substance = "  ".into();
    r.purpose.clear();
    r.justification.clear();
    r.categories.clear();
    r.requested.fields.clear();
    r.requested.text = None;
    let errs = errors(&p, &m);
    for path in [
        "body.content.substance",
        "body.content.purpose",
        "body.content.justification",
        "body.content.categories",
        "body.content.requested",
    ] {
        assert_rule(&errs, ValidationRule::MissingRequired, path);
    }
}

#[test]
fn answer_needs_in_reply_to() {
    let mut m = example(RESPONSE);
    m.header.in_reply_to = None;
    assert_rule(
        &errors(&profile(), &m),
        ValidationRule::MissingReplyTo,
        "header.in_reply_to",
    );
}

#[test]
fn non_answer_must_not_have_in_reply_to() {
    let mut m = request();
    m.header.in_reply_to = Some(m.header.id);
    assert_rule(
        &errors(&profile(), &m),
        ValidationRule::UnexpectedReplyTo,
        "header.in_reply_to",
    );
}

#[test]
fn not_yet_in_force() {
    let mut m = request();
    m.header.time = ts("2020-12-02T23:59:59Z");
    let errs = errors(&profile(), &m);
    assert_rule(&errs, ValidationRule::NotInForce, "header.time");
    assert!(errs.to_string().contains("2020-12-03"), "{errs}");
    m.header.time = ts("2020-12-03T00:00:00Z");
    profile()
        .validate(&m, now_for(&m))
        .expect("in force on its first day");
}

#[test]
fn terminated_six_months_after_notice() {
    let p = profile_with(
        "# termination_notice = \"YYYY-MM-DD\"",
        "termination_notice = \"2026-01-15\"",
    );
    assert_eq!(
        p.terminated_on().map(|d| d.to_string()).as_deref(),
        Some("2026-07-15")
    );
    let mut m = request();
    m.header.time = ts("2026-07-15T00:00:00Z");
    let errs = errors(&p, &m);
    assert_rule(&errs, ValidationRule::Terminated, "header.time");
    assert!(errs.to_string().contains("2026-07-15"), "{errs}");
    m.header.time = ts("2026-07-14T23:59:59Z");
    p.validate(&m, m.header.time)
        .expect("still in force on the last day");
    // Made while in force, but processed after termination.
    let errs = p
        .validate(&m, ts("2026-07-16T00:00:00Z"))
        .expect_err("terminated at processing time");
    assert_rule(&errs, ValidationRule::Terminated, "header");
}

#[test]
fn unknown_authority() {
    let mut m = request();
    m.header.to = AuthorityId::new("ru.mvd").expect("id");
    assert_rule(
        &errors(&profile(), &m),
        ValidationRule::UnknownAuthority,
        "header.to",
    );
}

#[test]
fn sender_and_recipient_of_the_same_party() {
    let mut m = request();
    m.header.to = AuthorityId::new("kz.mtszn").expect("id");
    assert_rule(&errors(&profile(), &m), ValidationRule::SameParty, "header.to");
}

#[test]
fn agreement_mismatch() {
    let mut m = request();
    m.header.agreement = "kz-am-2024".parse().expect("id");
    assert_rule(
        &errors(&profile(), &m),
        ValidationRule::AgreementMismatch,
        "header.agreement",
    );
}

#[test]
fn kind_not_allowed_by_profile() {
    let p = profile_with(
        "    \"unsolicited_information\",\n    \"directory_update\",",
        "    \"directory_update\",",
    );
    assert_rule(
        &errors(&p, &example(UNSOLICITED)),
        ValidationRule::KindNotAllowed,
        "body.kind",
    );
}

#[test]
fn topic_not_allowed_by_profile() {
    let p = profile_with("    \"violations_and_channels\",          # 4\n", "");
    assert_rule(
        &errors(&p, &example(UNSOLICITED)),
        ValidationRule::TopicNotAllowed,
        "body.content.topic",
    );
}

#[test]
fn text_too_long() {
    let mut m = request();
    request_mut(&mut m).substance = "а".repeat(20_001);
    assert_rule(
        &errors(&profile(), &m),
        ValidationRule::TooLong,
        "body.content.substance",
    );
}

#[test]
fn too_many_persons() {
    let p = profile_with("max_persons_per_message = 500", "max_persons_per_message = 1");
    let mut m = request();
    let r = request_mut(&mut m);
    r.persons.push(r.persons[0].clone());
    assert_rule(&errors(&p, &m), ValidationRule::TooMany, "body.content.persons");
}

#[test]
fn attachment_too_large() {
    let p = profile_with("max_attachment_bytes = 268435456", "max_attachment_bytes = 10");
    let errs = errors(&p, &example(RESPONSE));
    assert_rule(
        &errs,
        ValidationRule::TooLarge,
        "body.content.persons[0].photographs[0].length",
    );
}

#[test]
fn names_must_be_in_their_script() {
    let mut m = request();
    let r = request_mut(&mut m);
    r.persons[0].surname = Name {
        cyrillic: "SEITKALI".into(),
        latin: "Сейткали".into(),
    };
    let errs = errors(&profile(), &m);
    assert_rule(
        &errs,
        ValidationRule::WrongScript,
        "body.content.persons[0].surname.cyrillic",
    );
    assert_rule(
        &errs,
        ValidationRule::WrongScript,
        "body.content.persons[0].surname.latin",
    );
}

#[test]
fn kazakh_and_belarusian_letters_and_hyphens_are_accepted() {
    let mut m = request();
    let r = request_mut(&mut m);
    r.persons[0].surname = Name {
        cyrillic: "Әбдіқадыр-Ўласава".into(),
        latin: "ÄBDIQADYR-ŬLASAVA".into(),
    };
    profile().validate(&m, now_for(&m)).expect("valid");
}

#[test]
fn sealed_validation_needs_sealed_attachments() {
    let mut m = request();
    request_mut(&mut m).attachments[0] = Attachment {
        media_type: "application/pdf".into(),
        length: 0,
        sha256: Digest::default(),
        file: Some("/var/lib/app/letter.pdf".into()),
    };
    let p = profile();
    assert_rule(
        &errors(&p, &m),
        ValidationRule::AttachmentNotSealed,
        "body.content.attachments[0]",
    );
    p.validate_unsealed(&m, now_for(&m))
        .expect("a file is fine before sealing");
    request_mut(&mut m).attachments[0].file = None;
    let errs = p
        .validate_unsealed(&m, now_for(&m))
        .expect_err("neither sealed nor a file");
    assert_rule(
        &errs,
        ValidationRule::AttachmentNotSealed,
        "body.content.attachments[0]",
    );
}

#[test]
fn bad_media_types() {
    let mut m = example(RESPONSE);
    let MessageBody::Response(r) = &mut m.body else {
        panic!("response")
    };
    r.attachments[0].media_type = "pdf".into();
    r.persons[0].photographs[0].media_type = "application/pdf".into();
    let errs = errors(&profile(), &m);
    assert_rule(
        &errs,
        ValidationRule::BadMediaType,
        "body.content.attachments[0].media_type",
    );
    assert_rule(
        &errs,
        ValidationRule::BadMediaType,
        "body.content.persons[0].photographs[0].media_type",
    );
}

#[test]
fn message_from_the_future() {
    let m = request();
    let errs = profile()
        .validate(&m, m.header.time.plus_secs(-3600))
        .expect_err("future");
    assert_rule(&errs, ValidationRule::TimeInFuture, "header.time");
}

#[test]
fn refusal_needs_grounds_and_reason() {
    let mut m = example(RESPONSE);
    let MessageBody::Response(r) = &mut m.body else {
        panic!("response")
    };
    r.outcome = Outcome::Refused {
        grounds: vec![],
        reason: String::new(),
        partial: None,
    };
    let errs = errors(&profile(), &m);
    assert_rule(
        &errs,
        ValidationRule::MissingRequired,
        "body.content.outcome.refused.grounds",
    );
    assert_rule(
        &errs,
        ValidationRule::MissingRequired,
        "body.content.outcome.refused.reason",
    );
}

#[test]
fn roster_only_for_the_senders_own_authority() {
    let mut m = example(ROSTER);
    m.header.from = AuthorityId::new("kz.mtszn").expect("id");
    let errs = errors(&profile(), &m);
    assert_rule(
        &errs,
        ValidationRule::NotOwnAuthority,
        "body.content.change.signatory_roster.authority",
    );
}

#[test]
fn roster_with_duplicate_signatory() {
    let mut v = json_value(ROSTER);
    let first = v["body"]["content"]["change"]["signatory_roster"]["signatories"][0].clone();
    v["body"]["content"]["change"]["signatory_roster"]["signatories"][1] = first;
    let m: Message = serde_json::from_value(v).expect("parse");
    let errs = errors(&profile(), &m);
    assert_rule(
        &errs,
        ValidationRule::Duplicate,
        "body.content.change.signatory_roster.signatories[1].id",
    );
}

// ---- no personal data in error texts ----

const MARKERS: [&str; 6] = [
    "Маркерова",
    "MARKEROVA",
    "Маркерград",
    "MK7777777",
    "Маркерная",
    "1911-11-11",
];

#[test]
fn error_texts_carry_no_personal_data() {
    let p = profile_with("    \"fingerprint_card\",         # if any\n", "");
    let mut m = example(RESPONSE);
    m.header.in_reply_to = None;
    m.header.to = AuthorityId::new("kz.mtszn").expect("id");
    let MessageBody::Response(r) = &mut m.body else {
        panic!("response")
    };
    let person = &mut r.persons[0];
    // Every name in the wrong script, too long, and marked.
    person.surname = Name {
        cyrillic: format!("MARKEROVA{}", "x".repeat(400)),
        latin: "Маркерова".into(),
    };
    person.given_name = Name {
        cyrillic: String::new(),
        latin: "MARKEROVA Маркерова".into(),
    };
    person.place_of_birth = Some(format!("Маркерград{}", "ы".repeat(400)));
    person.date_of_birth = Some("1911-11-11".parse().expect("date"));
    person.documents[0].number = format!("MK7777777{}", "7".repeat(400));
    if let Some(res) = &mut person.residence {
        res.address = format!("ул. Маркерная {}", "д".repeat(30_000));
    }
    person.photographs[0].media_type = "Маркерова".into();
    r.purpose = String::new();
    let errs = errors(&p, &m);
    assert!(errs.errors().len() >= 8, "{errs}");
    let text = format!("{errs}\n{errs:?}");
    for marker in MARKERS {
        assert!(
            !text.contains(marker),
            "error text contains personal data {marker:?}:\n{text}"
        );
    }
}

// ---- profile loading ----

#[test]
fn profile_unknown_key_names_line_and_key() {
    let text = KZ_BY.replacen(
        "answer_deadline_days = 30",
        "answer_deadline_days = 30\nanswer_deadline_hours = 1",
        1,
    );
    let e = Profile::from_toml_str(&text, "bad.toml").expect_err("unknown key");
    let ProfileError::Syntax {
        source_name,
        line,
        reason,
        ..
    } = &e
    else {
        panic!("{e}")
    };
    assert_eq!(source_name, "bad.toml");
    let expected_line = text
        .lines()
        .position(|l| l.starts_with("answer_deadline_hours"))
        .expect("line")
        + 1;
    assert_eq!(*line, expected_line, "{e}");
    assert!(reason.contains("answer_deadline_hours"), "{e}");
    assert!(
        e.to_string().starts_with(&format!("bad.toml:{expected_line}:")),
        "{e}"
    );
}

#[test]
fn profile_must_be_bilateral_with_unique_authorities() {
    let text = KZ_BY.replacen("id = \"by.gpk\"", "id = \"kz.mvd\"", 1);
    let e = Profile::from_toml_str(&text, "dup.toml").expect_err("duplicate authority");
    assert!(
        matches!(&e, ProfileError::Invalid { key, .. } if key == "parties[1].authorities[1].id"),
        "{e}"
    );
    let text = KZ_BY.replacen("country = \"BLR\"", "country = \"KAZ\"", 1);
    assert!(Profile::from_toml_str(&text, "same.toml").is_err());
}

#[test]
fn profile_lookups() {
    let p = profile();
    assert_eq!(p.version(), 1);
    let kz_mvd = AuthorityId::new("kz.mvd").expect("id");
    assert!(p
        .authority(&kz_mvd)
        .is_some_and(|a| a.name.contains("Министерство внутренних дел")));
    assert_eq!(
        p.party_of(&kz_mvd).map(|x| x.country),
        Some(CountryCode::new("KAZ").expect("code"))
    );
    assert!(p.party_of(&AuthorityId::new("am.police").expect("id")).is_none());
    assert_eq!(p.retention_days(MessageKind::Request), 1095);
    assert!(p.in_force_at(ts("2026-01-01T00:00:00Z")).is_ok());
}

#[test]
fn answer_deadline_is_end_of_the_thirtieth_calendar_day() {
    let p = profile();
    assert_eq!(
        p.answer_deadline(ts("2026-11-02T15:00:00Z")),
        ts("2026-12-02T23:59:59Z")
    );
    assert_eq!(
        p.answer_deadline(ts("2026-11-02T00:00:00Z")),
        ts("2026-12-02T23:59:59Z")
    );
    assert_eq!(
        p.answer_deadline(ts("2026-01-31T23:59:59Z")),
        ts("2026-03-02T23:59:59Z")
    );
}

// ---- model helpers ----

#[test]
fn attachment_order_is_persons_photographs_fingerprint_then_documents() {
    let m = example(RESPONSE);
    let MessageBody::Response(r) = &m.body else {
        panic!("response")
    };
    let expected: Vec<&Attachment> = vec![
        &r.persons[0].photographs[0],
        r.persons[0].fingerprint_card.as_ref().expect("card"),
        &r.attachments[0],
    ];
    assert_eq!(m.attachments(), expected);
    let mut m2 = m.clone();
    for (i, a) in m2.attachments_mut().into_iter().enumerate() {
        a.length = i as u64;
    }
    let lengths: Vec<u64> = m2.attachments().iter().map(|a| a.length).collect();
    assert_eq!(lengths, vec![0, 1, 2]);
}

#[test]
fn kinds_and_answers() {
    assert_eq!(example(RESPONSE).kind(), MessageKind::Response);
    assert!(MessageKind::Response.is_answer());
    assert!(!MessageKind::Request.is_answer());
    assert!(!MessageKind::ConsentRequest.is_answer());
    assert!(MessageKind::ConsentDecision.is_answer());
}

#[test]
fn fields_present_lists_set_fields() {
    let mut p = Person::new(
        Name {
            cyrillic: "Иванова".into(),
            latin: "IVANOVA".into(),
        },
        Name {
            cyrillic: "Анна".into(),
            latin: "ANNA".into(),
        },
    );
    assert_eq!(
        p.fields_present(),
        vec![PersonField::Surname, PersonField::GivenName]
    );
    p.sex = Some(Sex::Female);
    p.photographs.push(Attachment {
        media_type: "image/jpeg".into(),
        length: 1,
        sha256: Digest([1; 32]),
        file: None,
    });
    assert_eq!(
        p.fields_present(),
        vec![
            PersonField::Surname,
            PersonField::GivenName,
            PersonField::Sex,
            PersonField::Photographs
        ]
    );
    assert_eq!(PersonField::ALL.len(), 16);
}

#[test]
fn bytes_are_cbor_byte_strings() {
    use ciborium::Value;
    let m = example(ROSTER);
    let mut buf = Vec::new();
    ciborium::into_writer(&m, &mut buf).expect("CBOR");
    let v: Value = ciborium::from_reader(buf.as_slice()).expect("value");
    fn find<'a>(v: &'a Value, key: &str) -> Vec<&'a Value> {
        match v {
            Value::Map(entries) => entries
                .iter()
                .flat_map(|(k, val)| {
                    let mut out = if k.as_text() == Some(key) {
                        vec![val]
                    } else {
                        vec![]
                    };
                    out.extend(find(val, key));
                    out
                })
                .collect(),
            Value::Array(items) => items.iter().flat_map(|x| find(x, key)).collect(),
            _ => vec![],
        }
    }
    let keys = find(&v, "public_key");
    assert_eq!(keys.len(), 2);
    assert!(keys.iter().all(|k| matches!(k, Value::Bytes(b) if b.len() == 32)));
    let times = find(&v, "valid_from");
    assert!(times.iter().all(|t| matches!(t, Value::Integer(_))));
    let r = example(RESPONSE);
    let mut buf = Vec::new();
    ciborium::into_writer(&r, &mut buf).expect("CBOR");
    let v: Value = ciborium::from_reader(buf.as_slice()).expect("value");
    let digests = find(&v, "sha256");
    assert_eq!(digests.len(), 3);
    assert!(digests
        .iter()
        .all(|d| matches!(d, Value::Bytes(b) if b.len() == 32)));
}

// ---- property tests: JSON and CBOR round trips ----

fn cyr() -> impl Strategy<Value = String> {
    "[А-ЯЁ][а-яёәғқңөұүһі]{1,12}(-[А-Я][а-я]{1,8})?"
}
fn lat() -> impl Strategy<Value = String> {
    "[A-Z][A-Z]{1,12}( [A-Z]{2,8})?"
}
fn name() -> impl Strategy<Value = Name> {
    (cyr(), lat()).prop_map(|(cyrillic, latin)| Name { cyrillic, latin })
}
fn date() -> impl Strategy<Value = jiff::civil::Date> {
    (1930i16..2020, 1i8..=12, 1i8..=28).prop_map(|(y, m, d)| jiff::civil::date(y, m, d))
}
fn text() -> impl Strategy<Value = String> {
    "[а-яА-Я][а-яА-Я0-9 ,.«»—\\n]{0,60}"
}
fn attachment_of(types: Vec<&'static str>) -> impl Strategy<Value = Attachment> {
    (prop::sample::select(types), 1u64..1 << 28, any::<[u8; 32]>()).prop_map(|(mt, length, d)| Attachment {
        media_type: mt.into(),
        length,
        sha256: Digest(d),
        file: None,
    })
}
fn attachment() -> impl Strategy<Value = Attachment> {
    attachment_of(vec!["image/jpeg", "image/png", "application/pdf"])
}
fn image() -> impl Strategy<Value = Attachment> {
    attachment_of(vec!["image/jpeg", "image/png"])
}
fn person() -> impl Strategy<Value = Person> {
    (
        (name(), name(), prop::option::of(name())),
        (
            prop::option::of(prop::sample::select(vec![Sex::Male, Sex::Female])),
            prop::option::of(date()),
        ),
        prop::option::of(text()),
        prop::collection::vec(
            prop_oneof![
                prop::sample::select(vec!["KAZ", "BLR", "ARM", "RUS"])
                    .prop_map(|c| Citizenship::Country(CountryCode::new(c).expect("code"))),
                Just(Citizenship::Stateless),
                text().prop_map(Citizenship::Other),
            ],
            0..3,
        ),
        prop::collection::vec(
            (
                "[A-Z]{0,2}",
                "[0-9]{6,9}",
                prop::option::of(date()),
                prop::option::of(text()),
            )
                .prop_map(|(series, number, issued, issuer)| IdentityDocument {
                    kind: DocumentKind::Passport,
                    series: (!series.is_empty()).then_some(series),
                    number,
                    issued,
                    issuer,
                }),
            0..3,
        ),
        (
            prop::collection::vec(image(), 0..3),
            prop::option::of(attachment()),
        ),
    )
        .prop_map(
            |((surname, given_name, patronymic), (sex, dob), pob, citizenship, documents, (photos, card))| {
                let mut p = Person::new(surname, given_name);
                p.patronymic = patronymic;
                p.sex = sex;
                p.date_of_birth = dob;
                p.place_of_birth = pob;
                p.citizenship = citizenship;
                p.documents = documents;
                p.photographs = photos;
                p.fingerprint_card = card;
                p
            },
        )
}
fn message() -> impl Strategy<Value = Message> {
    (
        any::<[u8; 16]>(),
        1_600_000_000i64..1_900_000_000,
        prop::collection::vec(person(), 0..3),
        text(),
        prop::collection::vec(attachment(), 0..3),
        any::<bool>(),
    )
        .prop_map(|(id, t, persons, txt, attachments, is_request)| {
            let mut m = example(REQUEST);
            m.header.id = Id::from_bytes(id);
            m.header.time = Timestamp::from_unix(t);
            if is_request {
                let r = request_mut(&mut m);
                r.persons = persons;
                r.substance = txt;
                r.attachments = attachments;
            } else {
                let mut resp = example(RESPONSE);
                let MessageBody::Response(r) = &mut resp.body else {
                    panic!("response")
                };
                r.persons = persons;
                r.information = Some(txt);
                r.attachments = attachments;
                r.outcome = Outcome::PartiallyFulfilled {
                    missing: konvert_envelope::model::InformationItems {
                        fields: vec![PersonField::Residence],
                        text: None,
                    },
                };
                m.body = resp.body;
                m.header.in_reply_to = Some(Id::from_bytes(id));
            }
            m
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn person_round_trips(p in person()) {
        let json = serde_json::to_string(&p).expect("JSON");
        prop_assert_eq!(&serde_json::from_str::<Person>(&json).expect("from JSON"), &p);
        let mut cbor = Vec::new();
        ciborium::into_writer(&p, &mut cbor).expect("CBOR");
        prop_assert_eq!(&ciborium::from_reader::<Person, _>(cbor.as_slice()).expect("from CBOR"), &p);
    }

    #[test]
    fn message_round_trips(m in message()) {
        let json = serde_json::to_string(&m).expect("JSON");
        prop_assert_eq!(&serde_json::from_str::<Message>(&json).expect("from JSON"), &m);
        let mut cbor = Vec::new();
        ciborium::into_writer(&m, &mut cbor).expect("CBOR");
        let back: Message = ciborium::from_reader(cbor.as_slice()).expect("from CBOR");
        prop_assert_eq!(&back, &m);
        prop_assert_eq!(back.attachments().len(), m.attachments().len());
    }

    #[test]
    fn generated_persons_in_a_request_validate(p in person()) {
        let mut m = request();
        request_mut(&mut m).persons = vec![p];
        let profile = profile();
        let r = profile.validate(&m, now_for(&m));
        prop_assert!(r.is_ok(), "{}", r.err().map(|e| e.to_string()).unwrap_or_default());
    }
}

#[test]
fn unknown_fields_in_enum_variants_are_refused() {
    let mut v = json_value(include_str!("../../docs/examples/response-refused.json"));
    v["body"]["content"]["outcome"]["refused"]["severity"] = "high".into();
    let e = serde_json::from_value::<Message>(v).expect_err("unknown field in a variant");
    assert!(e.to_string().contains("severity"), "{e}");
    let mut v = json_value(ROSTER);
    v["body"]["content"]["change"]["signatory_roster"]["signatories"][0]["email"] =
        "x@example.invalid".into();
    assert!(serde_json::from_value::<Message>(v).is_err());
}
