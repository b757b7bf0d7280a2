//! The REST client behind the CLI commands.

use anyhow::{anyhow, Context};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;

/// Talks to one cairn server.
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    pub fn new(server: &str, token: Option<String>) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: server.trim_end_matches('/').to_string(),
            token,
        }
    }

    /// A request to `/api/v1{path}`.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let mut req = self.http.request(method, format!("{}/api/v1{}", self.base, path));
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        req
    }

    /// Sends and turns a non-2xx answer into its one-line error.
    pub async fn send(&self, req: RequestBuilder) -> anyhow::Result<Response> {
        let response = req
            .send()
            .await
            .map_err(|e| anyhow!("cannot reach cairn server at {}: {}", self.base, root_cause(&e)))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| {
                let e = v.get("error")?;
                Some(format!(
                    "{} ({})",
                    e.get("message")?.as_str()?,
                    e.get("code")?.as_str()?
                ))
            })
            .unwrap_or_else(|| format!("HTTP {status}: {}", text.trim()));
        Err(anyhow!(message))
    }

    /// Sends and decodes a JSON answer; also returns the raw JSON.
    pub async fn json<T: DeserializeOwned>(
        &self,
        req: RequestBuilder,
    ) -> anyhow::Result<(T, serde_json::Value)> {
        let response = self.send(req).await?;
        let status = response.status();
        if status == StatusCode::NO_CONTENT {
            return Err(anyhow!("unexpected empty answer"));
        }
        let raw: serde_json::Value = response.json().await.context("decoding the server's answer")?;
        let value = serde_json::from_value(raw.clone()).context("decoding the server's answer")?;
        Ok((value, raw))
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
