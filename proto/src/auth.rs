//! The cluster token: one shared secret that every gRPC call and every HTTP
//! request but the probes must present, as `Authorization: Bearer <token>`
//! (or, for the dashboard in a browser, a cookie). Clients and workers read
//! it from `DASKRS_TOKEN` or a file; servers compare it in constant time.
//! The dashboard's cookie holds a digest of the token, never the token, and
//! is named per port: browsers share cookies across the ports of a host.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use daskrs_core::MAX_TOKEN_BYTES;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// The environment variable clients, workers and schedulers read the token from.
pub const TOKEN_ENV: &str = "DASKRS_TOKEN";
/// The dashboard's cookie is this, then the port the browser used.
pub const COOKIE_PREFIX: &str = "daskrs_token_";

/// A cluster token. Its text never appears in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Arc<str>);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(…)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token in {0} is empty")]
    Empty(String),
    #[error(
        "the token in {0} is not a valid token: use up to {MAX_TOKEN_BYTES} letters, digits and . _ ~ - \
         (e.g. `openssl rand -hex 32`)"
    )]
    Invalid(String),
    #[error("cannot read the token file {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
}

impl Token {
    /// A token from text (leading and trailing whitespace, such as a file's
    /// final newline, ignored); `from` names where it came from, for errors.
    pub fn parse(text: &str, from: &str) -> Result<Token, TokenError> {
        let t = text.trim();
        if t.is_empty() {
            return Err(TokenError::Empty(from.to_string()));
        }
        if !daskrs_core::is_token(t) {
            return Err(TokenError::Invalid(from.to_string()));
        }
        Ok(Token(t.into()))
    }

    /// The token of `file` if given, else of `DASKRS_TOKEN` if set, else none.
    pub fn load(file: Option<&Path>) -> Result<Option<Token>, TokenError> {
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| TokenError::File {
                path: path.display().to_string(),
                source,
            })?;
            return Token::parse(&text, &path.display().to_string()).map(Some);
        }
        match std::env::var(TOKEN_ENV) {
            Ok(text) => Token::parse(&text, TOKEN_ENV).map(Some),
            Err(_) => Ok(None),
        }
    }

    /// A fresh random token: 32 bytes from the system's generator, as hex.
    pub fn generate() -> Token {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).expect("the system's random number generator is available");
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Token(hex.into())
    }

    /// The token's text, for handing it to a user or a child process.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this token, in time that does not depend on
    /// where they differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(presented).into()
    }

    /// What the dashboard's cookie holds: a digest of the token, so the
    /// cookie, sent to every port of the host, does not carry the token.
    pub fn cookie_value(&self) -> String {
        let digest = Sha256::new()
            .chain_update(b"daskrs dashboard cookie\0")
            .chain_update(self.0.as_bytes())
            .finalize();
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn bearer(&self) -> MetadataValue<Ascii> {
        format!("Bearer {}", self.0)
            .parse()
            .expect("a token is printable ASCII")
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Wrong,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Missing => write!(
                f,
                "this daskrs cluster requires a token: set {TOKEN_ENV}, pass --token-file, \
                 or in Python Client(..., token=...)"
            ),
            Refusal::Wrong => write!(
                f,
                "the token presented is wrong for this daskrs cluster: check {TOKEN_ENV}, \
                 --token-file or token="
            ),
        }
    }
}

/// The credentials of an `Authorization` header if it is a bearer token
/// (the scheme's name in any case, spaces around the token ignored).
fn bearer_of(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    let spaced = rest.first() == Some(&b' ');
    (scheme.eq_ignore_ascii_case(b"bearer") && spaced).then(|| rest.trim_ascii())
}

/// Checks the value of an `Authorization` header (`Bearer <token>`), if any.
pub fn check_bearer(header: Option<&[u8]>, token: &Token) -> Result<(), Refusal> {
    let Some(value) = header else {
        return Err(Refusal::Missing);
    };
    let presented = bearer_of(value).ok_or(Refusal::Wrong)?;
    if token.matches(presented) {
        Ok(())
    } else {
        Err(Refusal::Wrong)
    }
}

/// The name of the dashboard's cookie for a request to `host` (its `Host`
/// header): one per port the browser sees.
pub fn cookie_name(host: Option<&[u8]>) -> String {
    let port = host
        .and_then(|h| {
            let at = h.iter().rposition(|b| *b == b':')?;
            let port = &h[at + 1..];
            (!port.is_empty() && port.iter().all(u8::is_ascii_digit)).then_some(port)
        })
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_else(|| "80".into());
    format!("{COOKIE_PREFIX}{port}")
}

/// Checks an HTTP request's credentials: a bearer `Authorization` header,
/// else the dashboard's cookie. (Another scheme's header, from a proxy in
/// front, is not this cluster's business.)
pub fn check_http(headers: &http::HeaderMap, token: &Token) -> Result<(), Refusal> {
    if let Some(value) = headers.get(http::header::AUTHORIZATION)
        && bearer_of(value.as_bytes()).is_some()
    {
        return check_bearer(Some(value.as_bytes()), token);
    }
    let name = cookie_name(headers.get(http::header::HOST).map(|h| h.as_bytes()));
    let cookie = headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            pair.strip_prefix(name.as_bytes())?.strip_prefix(b"=")
        });
    match cookie {
        None => Err(Refusal::Missing),
        Some(presented) if bool::from(token.cookie_value().as_bytes().ct_eq(presented)) => Ok(()),
        Some(_) => Err(Refusal::Wrong),
    }
}

/// A server's check of every gRPC call: none without a token configured.
#[derive(Clone, Debug, Default)]
pub struct Guard(Option<Token>);

impl Guard {
    pub fn new(token: Option<Token>) -> Guard {
        Guard(token)
    }
}

impl Interceptor for Guard {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.0 else {
            return Ok(req);
        };
        let header = req.metadata().get("authorization").map(|v| v.as_bytes());
        match check_bearer(header, token) {
            Ok(()) => Ok(req),
            Err(refusal) => Err(Status::unauthenticated(refusal.to_string())),
        }
    }
}

/// A client's side: puts the token on every call it makes.
#[derive(Clone, Debug, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    pub fn new(token: Option<&Token>) -> Bearer {
        Bearer(token.map(Token::bearer))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> Token {
        Token::parse("s3cret-token\n", "test").unwrap()
    }

    #[test]
    fn tokens_parse_trimmed_and_refuse_empty_or_odd_text() {
        assert_eq!(token().expose(), "s3cret-token");
        assert!(matches!(
            Token::parse(" \n", "f"),
            Err(TokenError::Empty(_))
        ));
        for odd in ["a b", "é", "a;b", "a+b", "a&b"] {
            assert!(
                matches!(Token::parse(odd, "f"), Err(TokenError::Invalid(_))),
                "{odd}"
            );
        }
        assert!(!format!("{:?}", token()).contains("s3cret"));
        let (a, b) = (Token::generate(), Token::generate());
        assert_eq!(a.expose().len(), 64);
        assert_ne!(a, b);
    }

    #[test]
    fn bearer_headers_and_cookies_are_checked() {
        let t = token();
        let bearer = |h: &[u8]| check_bearer(Some(h), &t);
        assert_eq!(check_bearer(None, &t), Err(Refusal::Missing));
        assert_eq!(bearer(b"Bearer s3cret-token"), Ok(()));
        assert_eq!(bearer(b"BEARER  s3cret-token "), Ok(()));
        assert_eq!(bearer(b"Bearer s3cret-tokeN"), Err(Refusal::Wrong));
        assert_eq!(bearer(b"Bearer s3cret-token2"), Err(Refusal::Wrong));
        assert_eq!(bearer(b"Bearers3cret-token"), Err(Refusal::Wrong));
        assert_eq!(bearer(b"s3cret-token"), Err(Refusal::Wrong));

        let mut h = http::HeaderMap::new();
        assert_eq!(check_http(&h, &t), Err(Refusal::Missing));
        h.insert("host", "localhost:8787".parse().unwrap());
        let value = t.cookie_value();
        assert!(!value.contains("s3cret"));
        let cookie = format!("a=1; daskrs_token_8787={value}; b=2");
        h.insert("cookie", cookie.parse().unwrap());
        assert_eq!(check_http(&h, &t), Ok(()));
        // Another port's cookie is not this one's; the token is no cookie.
        h.insert("host", "localhost:9999".parse().unwrap());
        assert_eq!(check_http(&h, &t), Err(Refusal::Missing));
        h.insert("host", "localhost:8787".parse().unwrap());
        h.insert("cookie", "daskrs_token_8787=s3cret-token".parse().unwrap());
        assert_eq!(check_http(&h, &t), Err(Refusal::Wrong));
        // A proxy's own credentials leave the cookie to speak.
        let cookie = format!("daskrs_token_8787={value}");
        h.insert("cookie", cookie.parse().unwrap());
        h.insert("authorization", "Basic dXNlcjpwdw==".parse().unwrap());
        assert_eq!(check_http(&h, &t), Ok(()));
        h.insert("authorization", "Bearer nope".parse().unwrap());
        assert_eq!(check_http(&h, &t), Err(Refusal::Wrong));
        h.insert("authorization", "Bearer s3cret-token".parse().unwrap());
        assert_eq!(check_http(&h, &t), Ok(()));
        assert_eq!(cookie_name(Some(b"[::1]:8787")), "daskrs_token_8787");
        assert_eq!(cookie_name(Some(b"example.com")), "daskrs_token_80");
        assert_eq!(cookie_name(None), "daskrs_token_80");
    }

    #[test]
    fn the_guard_refuses_calls_without_the_token_and_the_bearer_adds_it() {
        let t = token();
        let mut guard = Guard::new(Some(t.clone()));
        let e = guard.call(Request::new(())).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(e.message().contains("requires a token"), "{}", e.message());
        let wrong = Bearer::new(Some(&Token::parse("other", "x").unwrap()))
            .call(Request::new(()))
            .unwrap();
        let e = guard.call(wrong).unwrap_err();
        assert!(e.message().contains("wrong"), "{}", e.message());
        let right = Bearer::new(Some(&t)).call(Request::new(())).unwrap();
        assert!(guard.call(right).is_ok());
        assert!(Guard::new(None).call(Request::new(())).is_ok());
    }
}
