//! A small AWS Signature V4 signer for raw requests the SDK will not send:
//! forged signatures, unknown keys, expired presigned URLs, tampered payload
//! hashes, paths with percent-encoded dots. Paths and query values are taken
//! as already encoded.

use std::time::SystemTime;

use anyhow::Context;
use sha2::Digest;
use sha2::Sha256;

const REGION: &str = "us-east-1";

#[derive(Clone)]
pub struct Request {
    pub method: String,
    pub host: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn new(method: &str, host: &str, path: &str, body: Vec<u8>) -> Request {
        Request {
            method: method.into(),
            host: host.into(),
            path: path.into(),
            query: Vec::new(),
            headers: Vec::new(),
            body,
        }
    }

    pub fn query(mut self, k: &str, v: &str) -> Request {
        self.query.push((k.into(), v.into()));
        self
    }

    pub fn header(mut self, k: &str, v: &str) -> Request {
        self.headers.push((k.to_ascii_lowercase(), v.into()));
        self
    }

    /// Signs in the Authorization header (payload hash: the body's SHA-256).
    pub fn signed(self, access_key: &str, secret_key: &str) -> Request {
        self.signed_at(access_key, secret_key, SystemTime::now())
    }

    pub fn signed_at(mut self, access_key: &str, secret_key: &str, at: SystemTime) -> Request {
        let (date, stamp) = amz_date(at);
        let payload = hex(&Sha256::digest(&self.body));
        self.headers
            .retain(|(k, _)| k != "x-amz-date" && k != "x-amz-content-sha256");
        self = self
            .header("x-amz-date", &stamp)
            .header("x-amz-content-sha256", &payload);
        let (signed_headers, signature) = self.signature(secret_key, &date, &stamp, &payload);
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential={access_key}/{date}/{REGION}/s3/aws4_request, \
             SignedHeaders={signed_headers}, Signature={signature}"
        );
        self.header("authorization", &auth)
    }

    /// Signs as a presigned URL made at `at`, valid for `expires` seconds.
    pub fn presigned(
        mut self,
        access_key: &str,
        secret_key: &str,
        at: SystemTime,
        expires: u64,
    ) -> Request {
        let (date, stamp) = amz_date(at);
        let credential = format!("{access_key}%2F{date}%2F{REGION}%2Fs3%2Faws4_request");
        self = self
            .query("X-Amz-Algorithm", "AWS4-HMAC-SHA256")
            .query("X-Amz-Credential", &credential)
            .query("X-Amz-Date", &stamp)
            .query("X-Amz-Expires", &expires.to_string())
            .query("X-Amz-SignedHeaders", "host");
        let (_, signature) = self.signature(secret_key, &date, &stamp, "UNSIGNED-PAYLOAD");
        self.query("X-Amz-Signature", &signature)
    }

    fn all_headers(&self) -> Vec<(String, String)> {
        let mut h = self.headers.clone();
        h.push(("host".into(), self.host.clone()));
        h.sort();
        h
    }

    fn canonical_query(&self) -> String {
        let mut q = self.query.clone();
        q.sort();
        q.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    }

    fn signature(
        &self,
        secret_key: &str,
        date: &str,
        stamp: &str,
        payload: &str,
    ) -> (String, String) {
        let headers: Vec<(String, String)> =
            if self.query.iter().any(|(k, _)| k == "X-Amz-Algorithm") {
                vec![("host".into(), self.host.clone())]
            } else {
                self.all_headers()
            };
        let signed_headers = headers
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(";");
        let canonical_headers: String = headers
            .iter()
            .map(|(k, v)| format!("{k}:{}\n", v.trim()))
            .collect();
        let canonical = format!(
            "{}\n{}\n{}\n{canonical_headers}\n{signed_headers}\n{payload}",
            self.method,
            canonical_path(&self.path),
            self.canonical_query()
        );
        let scope = format!("{date}/{REGION}/s3/aws4_request");
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{}",
            hex(&Sha256::digest(canonical.as_bytes()))
        );
        let mut key = hmac(format!("AWS4{secret_key}").as_bytes(), date.as_bytes());
        for part in [REGION, "s3", "aws4_request"] {
            key = hmac(&key, part.as_bytes());
        }
        (signed_headers, hex(&hmac(&key, to_sign.as_bytes())))
    }

    /// Sends the request on a fresh connection: (status, body).
    pub async fn send(&self) -> anyhow::Result<(u16, String)> {
        use tokio::io::AsyncReadExt;
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::TcpStream::connect(&self.host).await?;
        let query = self.canonical_query();
        let target = if query.is_empty() {
            self.path.clone()
        } else {
            format!("{}?{query}", self.path)
        };
        let mut head = format!("{} {target} HTTP/1.1\r\n", self.method);
        for (k, v) in self.all_headers() {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!(
            "content-length: {}\r\nconnection: close\r\n\r\n",
            self.body.len()
        ));
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&self.body).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        let raw = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = raw.split_once("\r\n\r\n").context("no HTTP header end")?;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("no status in {head:?}"))?;
        Ok((status, body.to_owned()))
    }
}

/// A path as SigV4 signs it: decoded, then every byte but the unreserved
/// ones and '/' percent-encoded in upper case (so `%2e` signs as `.`).
fn canonical_path(path: &str) -> String {
    let raw = path.as_bytes();
    let mut decoded = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = raw
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (raw[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                decoded.push(b);
                i += 3;
            }
            (b, _) => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    decoded
        .iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().to_vec()
}

/// ("YYYYMMDD", "YYYYMMDDTHHMMSSZ") of `at`, in UTC.
fn amz_date(at: SystemTime) -> (String, String) {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let date = format!("{year:04}{month:02}{day:02}");
    let stamp = format!(
        "{date}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    (date, stamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_hmac() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_369_353_600);
        assert_eq!(amz_date(t).1, "20130524T000000Z");
        // RFC 4231 test case 2.
        assert_eq!(
            hex(&hmac(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
