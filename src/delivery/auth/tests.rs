//! Unit tests of each auth type; expected values are computed independently
//! (fixed vectors from Python's hashlib/base64, tokens verified with the
//! jsonwebtoken decoder and the public key).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::json;

use super::*;
use crate::config::{Duration as ConfigDuration, SecretList};

const RSA_KEY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/it/fixtures/jwt-rs256.key.pem"
);
const RSA_PUB: &[u8] = include_bytes!("../../../tests/it/fixtures/jwt-rs256.pub.pem");

fn client() -> Client {
    super::super::build_client(&crate::config::DeliveryConfig::default())
        .unwrap()
        .inner()
        .clone()
}

fn url(text: &str) -> url::Url {
    url::Url::parse(text).unwrap()
}

async fn apply(auth: &Auth, body: &[u8]) -> Applied {
    auth.apply(
        &client(),
        &url("https://example.com/hook?app=1"),
        "00000000016B3748-0003",
        1_700_000_000,
        body,
        Duration::from_secs(5),
    )
    .await
    .unwrap()
}

fn header<'a>(applied: &'a Applied, name: &str) -> &'a HeaderValue {
    &applied
        .headers
        .iter()
        .find(|(n, _)| n.as_str() == name)
        .unwrap_or_else(|| panic!("no {name} header in {:?}", applied.headers))
        .1
}

#[tokio::test]
async fn none_adds_nothing() {
    let applied = apply(&Auth::new(&AuthConfig::None).unwrap(), b"{}").await;
    assert!(applied.headers.is_empty() && applied.url.is_none());
}

#[tokio::test]
async fn basic_sends_rfc7617_credentials() {
    // `printf alice:s3cret | base64`
    assert_eq!(basic_value("alice", "s3cret"), "Basic YWxpY2U6czNjcmV0");
    let auth = Auth::new(&AuthConfig::Basic {
        user: "alice".into(),
        password: Secret::new("s3cret"),
    })
    .unwrap();
    let applied = apply(&auth, b"{}").await;
    let value = header(&applied, "authorization");
    assert_eq!(value, "Basic YWxpY2U6czNjcmV0");
    assert!(value.is_sensitive());
}

#[tokio::test]
async fn bearer_sends_the_token() {
    let auth = Auth::new(&AuthConfig::Bearer {
        token: Secret::new("tok-123"),
    })
    .unwrap();
    let applied = apply(&auth, b"{}").await;
    assert_eq!(header(&applied, "authorization"), "Bearer tok-123");
    assert!(header(&applied, "authorization").is_sensitive());
}

#[tokio::test]
async fn header_sends_the_api_key() {
    let auth = Auth::new(&AuthConfig::Header {
        name: "X-Api-Key".into(),
        value: Secret::new("key-456"),
    })
    .unwrap();
    let applied = apply(&auth, b"{}").await;
    assert_eq!(header(&applied, "x-api-key"), "key-456");
    assert!(header(&applied, "x-api-key").is_sensitive());
}

#[test]
fn a_header_value_with_a_line_break_is_a_setup_error() {
    let err = Auth::new(&AuthConfig::Bearer {
        token: Secret::new("a\nb"),
    })
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "auth.token cannot be sent in an HTTP header (line breaks or control characters)"
    );
}

#[tokio::test]
async fn hmac_signs_with_every_secret() {
    let auth = Auth::new(&AuthConfig::Hmac {
        secret: SecretList::new(vec![
            Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            Secret::new("other"),
        ]),
    })
    .unwrap();
    let applied = apply(&auth, b"{}").await;
    let sig = header(&applied, "webhook-signature").to_str().unwrap();
    assert_eq!(sig.split(' ').count(), 2);
}

#[test]
fn jiandaoyun_signature_matches_an_independent_sha1() {
    // python3: hashlib.sha1(b'n0nce:{"op":"data_create","data":{"_id":"42"}}:jdy-secret:1700000000').hexdigest()
    let body = br#"{"op":"data_create","data":{"_id":"42"}}"#;
    assert_eq!(
        jiandaoyun_signature("n0nce", body, "jdy-secret", 1_700_000_000),
        "892d8a1afb495118b2375b5699397334b3ad6fc3"
    );
}

#[test]
fn jiandaoyun_url_keeps_existing_query_parameters() {
    let signed = jiandaoyun_url(
        &url("https://example.com/hook?app=1&x=a%20b"),
        1_700_000_000,
        "abc",
    );
    assert_eq!(
        signed.as_str(),
        "https://example.com/hook?app=1&x=a%20b&timestamp=1700000000&nonce=abc"
    );
    let bare = jiandaoyun_url(&url("https://example.com/hook"), 5, "n");
    assert_eq!(
        bare.as_str(),
        "https://example.com/hook?timestamp=5&nonce=n"
    );
}

#[tokio::test]
async fn jiandaoyun_adds_query_signature_and_deliver_id() {
    let auth = Auth::new(&AuthConfig::Jiandaoyun {
        secret: Secret::new("jdy-secret"),
    })
    .unwrap();
    let body = br#"{"op":"data_create"}"#;
    let first = apply(&auth, body).await;
    let signed = first.url.as_ref().unwrap();
    let query: BTreeMap<String, String> = signed.query_pairs().into_owned().collect();
    assert_eq!(query["app"], "1");
    assert_eq!(query["timestamp"], "1700000000");
    let nonce = &query["nonce"];
    assert_eq!(nonce.len(), 16);
    // Recompute with the sha1 crate directly over "nonce:body:secret:timestamp".
    let mut input = format!("{nonce}:").into_bytes();
    input.extend_from_slice(body);
    input.extend_from_slice(b":jdy-secret:1700000000");
    let expected: String = Sha1::digest(&input)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(header(&first, "x-jdy-signature"), expected.as_str());
    assert_eq!(header(&first, "x-jdy-deliverid"), "00000000016B3748-0003");
    // A fresh nonce per attempt.
    let second = apply(&auth, body).await;
    assert_ne!(second.url, first.url);
}

fn jwt_config(algorithm: JwtAlgorithm) -> JwtConfig {
    let mut claims = BTreeMap::new();
    claims.insert("tenant".to_owned(), json!("acme"));
    claims.insert("roles".to_owned(), json!(["writer"]));
    JwtConfig {
        algorithm,
        secret: (algorithm == JwtAlgorithm::HS256).then(|| Secret::new("jwt-hs-secret")),
        private_key_file: (algorithm == JwtAlgorithm::RS256).then(|| RSA_KEY.into()),
        issuer: "walhook".into(),
        audience: "https://api.example.com".into(),
        subject: Some("crm-sync".into()),
        ttl: ConfigDuration::from_secs(120),
        claims,
    }
}

fn bearer_token(applied: &Applied) -> String {
    header(applied, "authorization")
        .to_str()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap()
        .to_owned()
}

fn verify(token: &str, algorithm: jsonwebtoken::Algorithm, key: &DecodingKey) -> serde_json::Value {
    let mut validation = Validation::new(algorithm);
    validation.set_audience(&["https://api.example.com"]);
    validation.set_issuer(&["walhook"]);
    // The token was minted for a fixed past instant; check exp arithmetic below.
    validation.validate_exp = false;
    validation.set_required_spec_claims(&["exp", "iat", "jti", "iss", "aud", "sub"]);
    jsonwebtoken::decode::<serde_json::Value>(token, key, &validation)
        .unwrap()
        .claims
}

fn check_claims(claims: &serde_json::Value) {
    assert_eq!(claims["iss"], "walhook");
    assert_eq!(claims["aud"], "https://api.example.com");
    assert_eq!(claims["sub"], "crm-sync");
    assert_eq!(claims["iat"], 1_700_000_000u64);
    assert_eq!(claims["exp"], 1_700_000_120u64);
    assert_eq!(claims["jti"], "00000000016B3748-0003");
    assert_eq!(claims["tenant"], "acme");
    assert_eq!(claims["roles"], json!(["writer"]));
}

#[tokio::test]
async fn jwt_hs256_verifies_with_the_secret() {
    let auth = Auth::new(&AuthConfig::Jwt(jwt_config(JwtAlgorithm::HS256))).unwrap();
    let token = bearer_token(&apply(&auth, b"{}").await);
    let claims = verify(
        &token,
        jsonwebtoken::Algorithm::HS256,
        &DecodingKey::from_secret(b"jwt-hs-secret"),
    );
    check_claims(&claims);
    // A wrong secret does not verify.
    let mut validation = Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.validate_aud = false;
    assert!(jsonwebtoken::decode::<serde_json::Value>(
        &token,
        &DecodingKey::from_secret(b"wrong"),
        &validation
    )
    .is_err());
}

#[tokio::test]
async fn jwt_rs256_verifies_with_the_public_key() {
    let auth = Auth::new(&AuthConfig::Jwt(jwt_config(JwtAlgorithm::RS256))).unwrap();
    let token = bearer_token(&apply(&auth, b"{}").await);
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
    let claims = verify(
        &token,
        jsonwebtoken::Algorithm::RS256,
        &DecodingKey::from_rsa_pem(RSA_PUB).unwrap(),
    );
    check_claims(&claims);
}

#[test]
fn jwt_rs256_with_a_bad_key_file_is_a_setup_error() {
    let dir = std::env::temp_dir().join(format!("walhook-badkey-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.pem");
    std::fs::write(
        &path,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let mut config = jwt_config(JwtAlgorithm::RS256);
    config.private_key_file = Some(path);
    let err = Auth::new(&AuthConfig::Jwt(config)).unwrap_err();
    assert!(
        matches!(err, AuthSetupError::Key(KeyFileError::Parse(_))),
        "{err:?}"
    );
    let mut config = jwt_config(JwtAlgorithm::RS256);
    config.private_key_file = Some(dir.join("missing.pem"));
    let err = Auth::new(&AuthConfig::Jwt(config)).unwrap_err();
    assert!(
        matches!(err, AuthSetupError::Key(KeyFileError::Read(_))),
        "{err:?}"
    );
}

#[test]
fn token_cache_refreshes_shortly_before_expiry() {
    let t0 = Instant::now();
    let mut cache = TokenCache::default();
    assert!(cache.get(t0).is_none());
    cache.put(Secret::new("a"), Duration::from_secs(3600), t0);
    assert_eq!(cache.get(t0).unwrap().expose(), "a");
    assert!(cache.get(t0 + Duration::from_secs(3569)).is_some());
    assert!(cache.get(t0 + Duration::from_secs(3570)).is_none());
    // A 10 s token is refreshed after 5 s, not reused until it dies.
    cache.put(Secret::new("b"), Duration::from_secs(10), t0);
    assert!(cache.get(t0 + Duration::from_millis(4999)).is_some());
    assert!(cache.get(t0 + Duration::from_secs(5)).is_none());
}

#[test]
fn token_cache_invalidates_only_the_token_that_was_refused() {
    let t0 = Instant::now();
    let mut cache = TokenCache::default();
    cache.put(Secret::new("new"), Duration::from_secs(3600), t0);
    // A 401 to a request that carried an older token keeps the newer one.
    assert!(!cache.invalidate(&Secret::new("old")));
    assert!(cache.get(t0).is_some());
    assert!(cache.invalidate(&Secret::new("new")));
    assert!(cache.get(t0).is_none());
}

// ---------------------------------------------------------------- oauth2 against a token endpoint

#[derive(Default)]
struct TokenServer {
    requests: AtomicUsize,
    forms: Mutex<Vec<(Option<String>, String)>>,
    answer: Mutex<Option<(u16, String)>>,
}

async fn token_endpoint(
    State(server): State<Arc<TokenServer>>,
    headers: HeaderMap,
    body: String,
) -> axum::response::Response {
    let n = server.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let auth = headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_owned());
    server.forms.lock().unwrap().push((auth, body));
    if let Some((status, body)) = server.answer.lock().unwrap().clone() {
        return (StatusCode::from_u16(status).unwrap(), body).into_response();
    }
    axum::Json(
        json!({"access_token": format!("token-{n}"), "token_type": "Bearer", "expires_in": "3600"}),
    )
    .into_response()
}

async fn token_server() -> (Arc<TokenServer>, url::Url) {
    let server = Arc::new(TokenServer::default());
    let app = axum::Router::new()
        .route("/token", axum::routing::post(token_endpoint))
        .with_state(server.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = url(&format!("http://{}/token", listener.local_addr().unwrap()));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (server, url)
}

fn oauth_config(token_url: url::Url, client_auth: ClientAuth) -> AuthConfig {
    AuthConfig::OAuth2(OAuth2Config {
        token_url,
        client_id: "walhook-client".into(),
        client_secret: Secret::new("cl13nt-s3cret"),
        scope: Some("hooks:write".into()),
        audience: Some("https://api.example.com".into()),
        client_auth,
    })
}

#[tokio::test]
async fn oauth2_fetches_once_caches_and_refreshes_after_a_401() {
    let (server, token_url) = token_server().await;
    let auth = Auth::new(&oauth_config(token_url, ClientAuth::Basic)).unwrap();
    let first = apply(&auth, b"{}").await;
    assert_eq!(bearer_token(&first), "token-1");
    let second = apply(&auth, b"{}").await;
    assert_eq!(
        bearer_token(&second),
        "token-1",
        "the cached token is reused"
    );
    assert_eq!(server.requests.load(Ordering::SeqCst), 1);
    // The form and client authentication as RFC 6749 4.4.2 / 2.3.1 describe.
    let (basic, form) = server.forms.lock().unwrap()[0].clone();
    assert_eq!(
        basic.as_deref(),
        Some(basic_value("walhook-client", "cl13nt-s3cret").as_str())
    );
    let form: BTreeMap<String, String> = url::form_urlencoded::parse(form.as_bytes())
        .into_owned()
        .collect();
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(form["scope"], "hooks:write");
    assert_eq!(form["audience"], "https://api.example.com");
    assert!(!form.contains_key("client_secret"));
    // A 401 drops the token; the next attempt fetches a new one.
    auth.unauthorized(second.token.as_ref()).await;
    let third = apply(&auth, b"{}").await;
    assert_eq!(bearer_token(&third), "token-2");
    assert_eq!(server.requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn oauth2_client_secret_post_puts_credentials_in_the_form() {
    let (server, token_url) = token_server().await;
    let auth = Auth::new(&oauth_config(token_url, ClientAuth::Post)).unwrap();
    apply(&auth, b"{}").await;
    let (basic, form) = server.forms.lock().unwrap()[0].clone();
    assert!(basic.is_none());
    let form: BTreeMap<String, String> = url::form_urlencoded::parse(form.as_bytes())
        .into_owned()
        .collect();
    assert_eq!(form["client_id"], "walhook-client");
    assert_eq!(form["client_secret"], "cl13nt-s3cret");
}

#[tokio::test]
async fn oauth2_token_is_refetched_when_it_nears_expiry() {
    let (server, token_url) = token_server().await;
    // A 1 s token is refreshed after half its life (the margin is capped at 30 s).
    *server.answer.lock().unwrap() = Some((
        200,
        json!({"access_token": "short-lived", "expires_in": 1}).to_string(),
    ));
    let auth = Auth::new(&oauth_config(token_url, ClientAuth::Basic)).unwrap();
    assert_eq!(bearer_token(&apply(&auth, b"{}").await), "short-lived");
    assert_eq!(bearer_token(&apply(&auth, b"{}").await), "short-lived");
    assert_eq!(server.requests.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(600)).await;
    apply(&auth, b"{}").await;
    assert_eq!(server.requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn oauth2_token_endpoint_failure_is_a_clear_attempt_failure() {
    let (server, token_url) = token_server().await;
    *server.answer.lock().unwrap() = Some((
        401,
        json!({"error": "invalid_client", "error_description": "unknown client"}).to_string(),
    ));
    let auth = Auth::new(&oauth_config(token_url.clone(), ClientAuth::Basic)).unwrap();
    let err = auth
        .apply(
            &client(),
            &token_url,
            "id-1",
            1,
            b"{}",
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot get an OAuth2 access token: the token endpoint answered HTTP 401: invalid_client (unknown client)"
    );
    *server.answer.lock().unwrap() = Some((200, "{\"token_type\":\"Bearer\"}".into()));
    let err = auth
        .apply(
            &client(),
            &token_url,
            "id-1",
            1,
            b"{}",
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::TokenResponse), "{err:?}");
    // An unreachable token endpoint.
    let closed = url(&format!("http://127.0.0.1:{}/token", unused_port()));
    let auth = Auth::new(&oauth_config(closed.clone(), ClientAuth::Basic)).unwrap();
    let err = auth
        .apply(&client(), &closed, "id-1", 1, b"{}", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::TokenRequest(_)), "{err:?}");
    assert!(!format!("{err:?}").contains("cl13nt-s3cret"));
}

fn unused_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

// ---------------------------------------------------------------- secrets in Debug

/// Every variant with a recognisable secret, and the secret.
fn secret_variants() -> Vec<(AuthConfig, &'static str)> {
    vec![
        (
            AuthConfig::Basic {
                user: "alice".into(),
                password: Secret::new("SECRET-basic-pw"),
            },
            "SECRET-basic-pw",
        ),
        (
            AuthConfig::Bearer {
                token: Secret::new("SECRET-bearer"),
            },
            "SECRET-bearer",
        ),
        (
            AuthConfig::Header {
                name: "X-Api-Key".into(),
                value: Secret::new("SECRET-api-key"),
            },
            "SECRET-api-key",
        ),
        (
            AuthConfig::Hmac {
                secret: SecretList::new(vec![Secret::new("SECRET-hmac")]),
            },
            "SECRET-hmac",
        ),
        (
            AuthConfig::Jiandaoyun {
                secret: Secret::new("SECRET-jdy"),
            },
            "SECRET-jdy",
        ),
        (
            AuthConfig::OAuth2(OAuth2Config {
                token_url: url("https://auth.example.com/token"),
                client_id: "client".into(),
                client_secret: Secret::new("SECRET-oauth"),
                scope: None,
                audience: None,
                client_auth: ClientAuth::Basic,
            }),
            "SECRET-oauth",
        ),
        (
            AuthConfig::Jwt(JwtConfig {
                secret: Some(Secret::new("SECRET-jwt")),
                ..jwt_config(JwtAlgorithm::HS256)
            }),
            "SECRET-jwt",
        ),
    ]
}

#[test]
fn debug_never_shows_a_secret_of_any_auth_type() {
    for (config, secret) in secret_variants() {
        let config_debug = format!("{config:?} {config:#?}");
        assert!(!config_debug.contains(secret), "{config_debug}");
        assert!(config_debug.contains("***"), "{config_debug}");
        let auth = Auth::new(&config).unwrap();
        let auth_debug = format!("{auth:?} {auth:#?}");
        assert!(!auth_debug.contains(secret), "{auth_debug}");
    }
    // The RS256 key: neither its path's content nor any PEM line appears.
    let auth = Auth::new(&AuthConfig::Jwt(jwt_config(JwtAlgorithm::RS256))).unwrap();
    let debug = format!("{auth:?}");
    assert!(
        !debug.contains("PRIVATE") && debug.contains("***"),
        "{debug}"
    );
}
