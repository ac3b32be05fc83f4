//! Row 31: Standard Webhooks signatures as a receiver checks them, with the independent
//! verifier of `support::standard_webhooks`, during a secret rotation.

use std::time::Duration;

use crate::pipeline::db_name;
use crate::runner::{scratch_dir, ConfigText, InProcess};
use crate::support::db::TestDb;
use crate::support::oracle::{self, Ledger};
use crate::support::receiver::TestReceiver;
use crate::support::standard_webhooks::{unix_now, Rejected, Verifier, TOLERANCE_SECS};

const WAIT: Duration = Duration::from_secs(30);

/// The new secret (Standard Webhooks form) and the old one (plain text).
const NEW: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OLD: &str = "old-plain-text-secret-0123456789";

/// Two secrets configured (new first, as during a rotation): every request carries
/// `v1,<sig_new> v1,<sig_old>`, each signature verifies with its own secret and not the
/// other's; one flipped body byte fails both; the same request replayed after the
/// five-minute tolerance is rejected by the reference verifier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_secrets_each_verify_and_tampering_or_replay_fails() {
    let db = TestDb::new().await;
    Ledger::create(&db).await;
    let receiver = TestReceiver::start().await;
    let name = db_name(&db);
    let store = scratch_dir(&name).join("store");
    let cfg = ConfigText::new(&db.url(), &name, &store)
        .table(Ledger::TABLE_TOML)
        .subscription(
            "signed",
            &receiver.url(),
            &format!("auth = {{ type = \"hmac\", secret = [\"{NEW}\", \"{OLD}\"] }}"),
        );
    let wh = InProcess::start(cfg.parse()).await;
    Ledger::insert(&db, 1, 5).await;
    Ledger::bump(&db, 1, 5).await;
    oracle::settle(&db, &receiver, None, "signed", WAIT)
        .await
        .assert_ok(0);
    wh.stop().await.expect("clean stop");

    let (new, old) = (Verifier::new(NEW), Verifier::new(OLD));
    let requests = receiver.requests();
    assert_eq!(requests.len(), 10);
    for request in &requests {
        let now = unix_now();
        let id = request.header("webhook-id").expect("webhook-id");
        let ts = request
            .header("webhook-timestamp")
            .expect("webhook-timestamp");
        let header = request
            .header("webhook-signature")
            .expect("webhook-signature");
        let sigs: Vec<&str> = header.split(' ').collect();
        assert_eq!(sigs.len(), 2, "one signature per secret: {header}");
        assert!(
            new.verify_one(sigs[0], id, ts, &request.body),
            "new secret signs first"
        );
        assert!(
            old.verify_one(sigs[1], id, ts, &request.body),
            "old secret second"
        );
        assert!(!new.verify_one(sigs[1], id, ts, &request.body));
        assert!(!old.verify_one(sigs[0], id, ts, &request.body));
        assert_eq!(new.verify_request(request, now), Ok(()));
        assert_eq!(old.verify_request(request, now), Ok(()));

        // One body byte changed: neither secret accepts it.
        let mut tampered = request.body.to_vec();
        let middle = tampered.len() / 2;
        tampered[middle] ^= 0x01;
        for verifier in [&new, &old] {
            assert_eq!(
                verifier.verify(Some(id), Some(ts), Some(header), &tampered, now),
                Err(Rejected::NoMatchingSignature)
            );
        }

        // The stored request replayed after the tolerance: rejected, though the
        // signature itself is still valid.
        let sent: u64 = ts.parse().expect("numeric timestamp");
        assert!(sent.abs_diff(now) < 60, "timestamp is the send time");
        let later = sent + TOLERANCE_SECS + 1;
        assert_eq!(new.verify_request(request, later), Err(Rejected::TooOld));
        assert_eq!(old.verify_request(request, later), Err(Rejected::TooOld));
    }
    let _ = db
        .client()
        .batch_execute(&format!("SELECT pg_drop_replication_slot('{name}')"))
        .await;
}

/// walhook's signer and the independent verifier agree on the published vector and on
/// bodies walhook might send (multi-byte UTF-8, NUL escapes, empty), in both secret forms.
#[test]
fn the_signer_matches_the_reference_verifier_and_the_published_vector() {
    use walhook::delivery::{signature_header, SigningKey};
    let vector = signature_header(
        &[SigningKey::from_secret(NEW).unwrap()],
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1_614_265_330,
        br#"{"test": 2432232314}"#,
    );
    assert_eq!(vector, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    let bodies: [&[u8]; 3] = [
        "{\"name\":\"表单 ✓ 😀\",\"nul\":\"\\u0000\"}".as_bytes(),
        b"",
        b"{\"events\":[]}",
    ];
    for secret in [NEW, OLD] {
        let key = SigningKey::from_secret(secret).unwrap();
        for body in bodies {
            let header = signature_header(
                std::slice::from_ref(&key),
                "0000000001000000-0001",
                1_700_000_000,
                body,
            );
            assert_eq!(
                Verifier::new(secret).verify(
                    Some("0000000001000000-0001"),
                    Some("1700000000"),
                    Some(&header),
                    body,
                    1_700_000_000
                ),
                Ok(()),
                "{secret}: {header}"
            );
        }
    }
}
