//! The legacy engine's envelope format, as the engine reads and writes it (SPEC 4.1):
//! `ring` AES-256-GCM, `serde_json` into four required strings (unknown fields ignored),
//! standard base64 with canonical padding, empty associated data, UTF-8 plaintext.
//!
//! One JSON value per line on stdin, one per line on stdout:
//!   encrypt KEY_HEX KEY_ID   a JSON string (the plaintext)  -> the envelope text
//!   decrypt KEY_HEX          a JSON string (the stored text) -> {"plaintext": s} | {"error": s}
//!   is-encrypted             a JSON string (the stored text) -> true | false
//!   hash                     a JSON string (the value)       -> "sha256:<lowercase hex>"
//! Test tool only: the keys are the tests' fixed keys.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use std::io::{self, BufRead, Write};

/// The engine's struct: four required strings; serde ignores every other field.
#[derive(Serialize, Deserialize)]
struct Envelope {
    ciphertext: String,
    nonce: String,
    key_id: String,
    algorithm: String,
}

/// base64 0.22 `STANDARD` decodes only canonical, padded text; Debian ships 0.13, whose
/// decoder also takes unpadded input, so the padding rule is checked here first. (0.13 already
/// refuses non-zero trailing bits, as 0.22 does.)
fn b64_decode(text: &str) -> Result<Vec<u8>, String> {
    if text.len() % 4 != 0 {
        return Err("base64 without canonical padding".into());
    }
    base64::decode_config(text, base64::STANDARD).map_err(|e| format!("base64: {e}"))
}

fn key(hex: &str) -> LessSafeKey {
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("key hex"))
        .collect();
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &bytes).expect("32-byte key"))
}

fn encrypt(key: &LessSafeKey, key_id: &str, plaintext: &str) -> String {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new().fill(&mut nonce).expect("random nonce");
    let mut data = plaintext.as_bytes().to_vec();
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut data)
        .expect("seal");
    serde_json::to_string(&Envelope {
        ciphertext: base64::encode_config(&data, base64::STANDARD),
        nonce: base64::encode_config(nonce, base64::STANDARD),
        key_id: key_id.to_string(),
        algorithm: "AES-256-GCM".to_string(),
    })
    .expect("json")
}

fn decrypt(key: &LessSafeKey, stored: &str) -> Result<String, String> {
    let envelope: Envelope = serde_json::from_str(stored).map_err(|e| format!("json: {e}"))?;
    let mut data = b64_decode(&envelope.ciphertext)?;
    let nonce = Nonce::try_assume_unique_for_key(&b64_decode(&envelope.nonce)?)
        .map_err(|_| "nonce is not 12 bytes".to_string())?;
    // The engine never looks at `algorithm` or (with one key) `key_id`.
    let plaintext = key
        .open_in_place(nonce, Aad::empty(), &mut data)
        .map_err(|_| "authentication failed".to_string())?;
    String::from_utf8(plaintext.to_vec()).map_err(|_| "not UTF-8".to_string())
}

/// The engine's `is_encrypted`: a JSON object whose ciphertext, nonce, key_id and algorithm
/// are strings.
fn is_encrypted(stored: &str) -> bool {
    match serde_json::from_str::<serde_json::Value>(stored) {
        Ok(serde_json::Value::Object(map)) => ["ciphertext", "nonce", "key_id", "algorithm"]
            .iter()
            .all(|field| matches!(map.get(*field), Some(serde_json::Value::String(_)))),
        _ => false,
    }
}

/// The engine's one-way hash: `sha256:` and the lowercase hex SHA-256 of the UTF-8 value,
/// whatever the value (one that already looks hashed included).
fn hash(value: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, value.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let stdout = io::stdout();
    let mut out = stdout.lock();
    for line in io::stdin().lock().lines() {
        let text: String = serde_json::from_str(&line.expect("stdin")).expect("a JSON string a line");
        let answer = match args[1].as_str() {
            "encrypt" => serde_json::Value::String(encrypt(&key(&args[2]), &args[3], &text)),
            "decrypt" => match decrypt(&key(&args[2]), &text) {
                Ok(plaintext) => serde_json::json!({ "plaintext": plaintext }),
                Err(error) => serde_json::json!({ "error": error }),
            },
            "is-encrypted" => serde_json::Value::Bool(is_encrypted(&text)),
            "hash" => serde_json::Value::String(hash(&text)),
            other => panic!("unknown command {other}"),
        };
        writeln!(out, "{answer}").expect("stdout");
    }
}
