//! A remote-write destination as the operator names it: a URL and its
//! options, in one value (`--remote-write SPEC`, repeatable, or
//! `MONITOR_REMOTE_WRITE=SPEC,SPEC`):
//!
//! ```text
//! URL[;bearer-token-file=FILE][;basic-auth-file=FILE][;ca-file=FILE]
//! ```
//!
//! - `bearer-token-file`: `Authorization: Bearer <the file's first line>`;
//! - `basic-auth-file`: a file holding `user:password` (first line);
//! - `ca-file`: PEM certificates the receiver's https certificate must
//!   chain to (default: the system bundle `/etc/ssl/certs/ca-certificates.crt`).
//!
//! Secrets live in files (never in argv, the environment or the URL, which
//! `ps`, logs and the store's cursor table show): a URL with a user or
//! password in it is refused. Files are read once, at start. Parsing is
//! pure ([`parse`]); reading the files is [`Destination::load`].

use std::path::PathBuf;

/// Where the system's CA bundle lives on Debian and its derivatives.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A destination as given: the URL and the files named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestinationSpec {
    /// `http://` or `https://`, no credentials; also the destination's
    /// name (its cursor's key in the store, its `destination` label).
    pub url: String,
    pub bearer_token_file: Option<PathBuf>,
    pub basic_auth_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
}

/// Parses one SPEC; the error says what is wrong with it.
pub fn parse(spec: &str) -> Result<DestinationSpec, String> {
    let mut parts = spec.split(';').map(str::trim);
    let url = parts.next().unwrap_or_default();
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("'{url}' is not a URL like http://host:9090/api/v1/write"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(format!(
                "'{url}': the URL must start with http:// or https://"
            ));
        }
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("'{url}': the URL names no host"));
    };
    if authority.as_str().contains('@') {
        return Err(format!(
            "'{}': no credentials in the URL (they would show in logs and ps); use \
             bearer-token-file= or basic-auth-file=",
            uri.host().unwrap_or("?")
        ));
    }
    let mut d = DestinationSpec {
        url: url.to_owned(),
        bearer_token_file: None,
        basic_auth_file: None,
        ca_file: None,
    };
    for option in parts.filter(|p| !p.is_empty()) {
        let Some((key, value)) = option.split_once('=') else {
            return Err(format!("'{option}': expected key=value after the URL"));
        };
        let slot = match key.trim() {
            "bearer-token-file" => &mut d.bearer_token_file,
            "basic-auth-file" => &mut d.basic_auth_file,
            "ca-file" => &mut d.ca_file,
            other => {
                return Err(format!(
                    "unknown option '{other}' (known: bearer-token-file, basic-auth-file, ca-file)"
                ));
            }
        };
        if value.trim().is_empty() {
            return Err(format!("'{option}': the file name is empty"));
        }
        *slot = Some(PathBuf::from(value.trim()));
    }
    if d.bearer_token_file.is_some() && d.basic_auth_file.is_some() {
        return Err("bearer-token-file and basic-auth-file exclude each other".into());
    }
    Ok(d)
}

/// What the `Authorization` header carries.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    None,
    /// The header's whole value (`Bearer ...` or `Basic ...`).
    Header(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credentials::None => "None",
            Credentials::Header(_) => "Header(..)",
        })
    }
}

/// A destination ready to send to: its files read.
#[derive(Clone, Debug)]
pub struct Destination {
    pub url: String,
    pub uri: http::Uri,
    pub credentials: Credentials,
    /// DER certificates to trust for https (empty for http).
    pub roots_der: Vec<Vec<u8>>,
}

impl Destination {
    /// Reads the files a spec names; the error names the file.
    pub fn load(spec: &DestinationSpec) -> Result<Destination, String> {
        let uri: http::Uri = spec
            .url
            .parse()
            .map_err(|e| format!("'{}': {e}", spec.url))?;
        let first_line = |p: &PathBuf| -> Result<String, String> {
            let text = std::fs::read_to_string(p)
                .map_err(|e| format!("{}: cannot read: {e}", p.display()))?;
            let line = text.lines().next().unwrap_or_default().trim().to_owned();
            if line.is_empty() {
                return Err(format!("{}: empty", p.display()));
            }
            Ok(line)
        };
        let credentials = match (&spec.bearer_token_file, &spec.basic_auth_file) {
            (Some(f), _) => Credentials::Header(format!("Bearer {}", first_line(f)?)),
            (None, Some(f)) => {
                let pair = first_line(f)?;
                if !pair.contains(':') {
                    return Err(format!("{}: expected user:password", f.display()));
                }
                let b64 =
                    monitor::base64::encode(pair.as_bytes(), monitor::base64::Alphabet::Standard);
                Credentials::Header(format!("Basic {b64}"))
            }
            (None, None) => Credentials::None,
        };
        let roots_der = if uri.scheme_str() == Some("https") {
            let path = spec
                .ca_file
                .clone()
                .unwrap_or_else(|| PathBuf::from(SYSTEM_CA_BUNDLE));
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("{}: cannot read the CA file: {e}", path.display()))?;
            let blocks =
                monitor::pem::decode_all(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            let ders: Vec<Vec<u8>> = blocks
                .into_iter()
                .filter(|b| b.label == "CERTIFICATE")
                .map(|b| b.der)
                .collect();
            if ders.is_empty() {
                return Err(format!("{}: no certificate in it", path.display()));
            }
            ders
        } else {
            Vec::new()
        };
        Ok(Destination {
            url: spec.url.clone(),
            uri,
            credentials,
            roots_der,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let d = parse("http://127.0.0.1:9090/api/v1/write").unwrap();
        assert_eq!(d.url, "http://127.0.0.1:9090/api/v1/write");
        assert_eq!(d.ca_file, None);
        let d = parse("https://m:9009/push; ca-file=/etc/ca.pem ;bearer-token-file=/t").unwrap();
        assert_eq!(d.url, "https://m:9009/push");
        assert_eq!(d.ca_file, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(d.bearer_token_file, Some(PathBuf::from("/t")));
    }

    #[test]
    fn bad_specs_say_why() {
        let e = |s: &str| parse(s).unwrap_err();
        assert!(
            e("ftp://x/y").contains("http:// or https://"),
            "{}",
            e("ftp://x/y")
        );
        assert!(e("http://u:p@x/y").contains("no credentials in the URL"));
        assert!(e("http://x/y;color=red").contains("unknown option 'color'"));
        assert!(e("http://x/y;ca-file").contains("expected key=value"));
        assert!(e("http://x/y;bearer-token-file=a;basic-auth-file=b").contains("exclude"));
        assert!(e("not a url").contains("not a URL"));
    }
}
