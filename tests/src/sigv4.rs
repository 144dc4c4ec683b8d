//! A small AWS Signature V4 signer for raw requests the SDK will not send:
//! forged signatures, unknown keys, expired presigned URLs, tampered payload
//! hashes, paths with percent-encoded dots, `aws-chunked` bodies with forged
//! chunk signatures or wrong checksum trailers. Paths and query values are
//! taken as already encoded.

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

    pub fn signed_at(self, access_key: &str, secret_key: &str, at: SystemTime) -> Request {
        let payload = hex(&Sha256::digest(&self.body));
        self.sign_as(access_key, secret_key, at, &payload).0
    }

    /// Signs in the Authorization header with `payload` as the
    /// x-amz-content-sha256 value; answers the request and its signature
    /// (the seed of a streaming body's chunk signatures).
    fn sign_as(
        mut self,
        access_key: &str,
        secret_key: &str,
        at: SystemTime,
        payload: &str,
    ) -> (Request, String) {
        let (date, stamp) = amz_date(at);
        self.headers
            .retain(|(k, _)| k != "x-amz-date" && k != "x-amz-content-sha256");
        self = self
            .header("x-amz-date", &stamp)
            .header("x-amz-content-sha256", payload);
        let (signed_headers, signature) = self.signature(secret_key, &date, &stamp, payload);
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential={access_key}/{date}/{REGION}/s3/aws4_request, \
             SignedHeaders={signed_headers}, Signature={signature}"
        );
        (self.header("authorization", &auth), signature)
    }

    /// Frames the body as `aws-chunked` (Content-Encoding gets the token
    /// appended) with its decoded length announced.
    fn chunked_headers(mut self) -> Request {
        let encoding = match self
            .headers
            .iter()
            .position(|(k, _)| k == "content-encoding")
        {
            Some(i) => format!("{},aws-chunked", self.headers.remove(i).1),
            None => "aws-chunked".to_owned(),
        };
        let len = self.body.len().to_string();
        self.header("content-encoding", &encoding)
            .header("x-amz-decoded-content-length", &len)
    }

    /// Signs as a streaming upload (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD`): the
    /// body is sent in chunks of `chunk` bytes, each signed with the previous
    /// signature; chunk number `forge` (from 0; the final empty chunk counts)
    /// gets a signature made with another secret.
    pub fn streaming_signed(
        self,
        access_key: &str,
        secret_key: &str,
        chunk: usize,
        forge: Option<usize>,
    ) -> Request {
        let at = SystemTime::now();
        let (date, stamp) = amz_date(at);
        let data = self.body.clone();
        let (mut req, mut prev) = self.chunked_headers().sign_as(
            access_key,
            secret_key,
            at,
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        );
        let scope = format!("{date}/{REGION}/s3/aws4_request");
        let empty = sha256_hex(b"");
        let mut body = Vec::new();
        let pieces: Vec<&[u8]> = data.chunks(chunk.max(1)).chain([&[][..]]).collect();
        for (i, piece) in pieces.into_iter().enumerate() {
            let to_sign = format!(
                "AWS4-HMAC-SHA256-PAYLOAD\n{stamp}\n{scope}\n{prev}\n{empty}\n{}",
                sha256_hex(piece)
            );
            let secret = if forge == Some(i) {
                "a-forger-does-not-know-the-secret"
            } else {
                secret_key
            };
            let signature = hex(&hmac(&signing_key(secret, &date), to_sign.as_bytes()));
            body.extend_from_slice(
                format!("{:x};chunk-signature={signature}\r\n", piece.len()).as_bytes(),
            );
            body.extend_from_slice(piece);
            body.extend_from_slice(b"\r\n");
            prev = signature;
        }
        req.body = body;
        req
    }

    /// Signs as a streaming upload with unsigned chunks and trailers
    /// (`STREAMING-UNSIGNED-PAYLOAD-TRAILER`), as SDKs send a body with its
    /// checksum: `trailers` (name, value) follow the last chunk and are named
    /// in `x-amz-trailer`.
    pub fn streaming_unsigned_trailer(
        self,
        access_key: &str,
        secret_key: &str,
        chunk: usize,
        trailers: &[(&str, &str)],
    ) -> Request {
        let names: Vec<&str> = trailers.iter().map(|t| t.0).collect();
        let data = self.body.clone();
        let mut req = self.chunked_headers();
        if !names.is_empty() {
            req = req.header("x-amz-trailer", &names.join(","));
        }
        let (mut req, _) = req.sign_as(
            access_key,
            secret_key,
            SystemTime::now(),
            "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        );
        let mut body = Vec::new();
        for piece in data.chunks(chunk.max(1)) {
            body.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            body.extend_from_slice(piece);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"0\r\n");
        for (name, value) in trailers {
            body.extend_from_slice(format!("{name}:{value}\r\n").as_bytes());
        }
        body.extend_from_slice(b"\r\n");
        req.body = body;
        req
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
        let key = signing_key(secret_key, date);
        (signed_headers, hex(&hmac(&key, to_sign.as_bytes())))
    }

    /// Sends the request on a fresh connection: (status, body).
    pub async fn send(&self) -> anyhow::Result<(u16, String)> {
        let r = self.send_full().await?;
        Ok((r.status, r.body))
    }

    /// Sends the request on a fresh connection: status, headers and body.
    pub async fn send_full(&self) -> anyhow::Result<Response> {
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
        let headers = head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Ok(Response {
            status,
            headers,
            body: body.to_owned(),
        })
    }
}

/// An answer to a raw request.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Names in lower case, in the order sent.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// SigV4's signing key of a secret on a date (YYYYMMDD).
fn signing_key(secret_key: &str, date: &str) -> Vec<u8> {
    let mut key = hmac(format!("AWS4{secret_key}").as_bytes(), date.as_bytes());
    for part in [REGION, "s3", "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    key
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

/// Standard base64 with padding (checksum values).
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for group in data.chunks(3) {
        let b = [
            group[0],
            *group.get(1).unwrap_or(&0),
            *group.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= group.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
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
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(b"fooba"), "Zm9vYmE=");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
        // RFC 4231 test case 2.
        assert_eq!(
            hex(&hmac(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
