//! The AEP streaming ingestion envelope, written once per event by splicing
//! the plugin's (already validated) body into a pre-rendered header, so the
//! hot path never builds a JSON tree.
//!
//! `header.source` carries, beside the configured `name`, the
//! `pluginVersion` (the component's SHA-256) that produced the event, so an
//! event can always be traced to the exact code that mapped it, across hot
//! reloads.

use crate::plugin::contract::Event;
use crate::source::Timestamp;
use serde_json::json;

/// The XDM schema an event conforms to.
#[derive(Debug, Clone)]
pub struct SchemaRef {
    /// The schema `$id`.
    pub id: String,
}

/// Renders envelopes for one pipeline.
#[derive(Debug, Clone)]
pub struct EnvelopeBuilder {
    /// `{"header":{...,"source":{"name":"…","pluginVersion":"`
    head: String,
    /// `"}},"body":{"xdmMeta":{...},"xdmEntity":{"_id":`
    prefix: String,
}

impl EnvelopeBuilder {
    /// An envelope builder for a dataset and schema. `flow_id` is written to
    /// the header when set (newer AEP docs); `imsOrgId` always (older docs).
    pub fn new(
        schema: &SchemaRef,
        ims_org: &str,
        dataset_id: &str,
        flow_id: Option<&str>,
        source_name: &str,
    ) -> Self {
        let schema_ref = json!({
            "id": schema.id,
            "contentType": "application/vnd.adobe.xed-full+json;version=1",
        });
        let mut header = json!({
            "schemaRef": schema_ref,
            "imsOrgId": ims_org,
            "datasetId": dataset_id,
        });
        if let Some(flow) = flow_id {
            header["flowId"] = json!(flow);
        }
        let header = header.to_string();
        let head = format!(
            r#"{},"source":{{"name":{},"pluginVersion":""#,
            &header[..header.len() - 1],
            json!(source_name)
        );
        let prefix = format!(
            r#""}}}},"body":{{"xdmMeta":{{"schemaRef":{schema_ref}}},"xdmEntity":{{"_id":"#
        );
        Self {
            head: format!(r#"{{"header":{head}"#),
            prefix,
        }
    }

    /// The envelope for one event produced by plugin `version` (a hex
    /// hash). The body is a JSON object without `_id` and `timestamp` (the
    /// plugin runtime checked it).
    pub fn render(&self, event: &Event, version: &str) -> String {
        let body = event.body.trim();
        let inner = body[1..body.len() - 1].trim();
        let id = serde_json::to_string(&event.id).unwrap_or_default();
        let ts = Timestamp::from_instant(event.timestamp).rfc3339();
        debug_assert!(version.bytes().all(|b| b.is_ascii_hexdigit()));
        let mut out = String::with_capacity(
            self.head.len() + version.len() + self.prefix.len() + body.len() + id.len() + 48,
        );
        out.push_str(&self.head);
        out.push_str(version);
        out.push_str(&self.prefix);
        out.push_str(&id);
        out.push_str(r#","timestamp":""#);
        out.push_str(&ts);
        out.push('"');
        if !inner.is_empty() {
            out.push(',');
            out.push_str(inner);
        }
        out.push_str("}}}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::contract::Instant;

    #[test]
    fn envelope_has_aep_shape_and_the_body_fields() {
        let b = EnvelopeBuilder::new(
            &SchemaRef {
                id: "https://ns.adobe.com/acme/schemas/1".into(),
            },
            "ORG@AdobeOrg",
            "ds1",
            Some("flow1"),
            "freshet",
        );
        let event = Event {
            id: "abc".into(),
            timestamp: Instant {
                seconds: 1_700_000_000,
                nanos: 500_000_000,
            },
            body: r#" {"eventType":"commerce.purchases","_acme":{"x":1}} "#.into(),
        };
        let v: serde_json::Value = serde_json::from_str(&b.render(&event, "ab12")).unwrap();
        assert_eq!(v["header"]["datasetId"], "ds1");
        assert_eq!(v["header"]["source"]["name"], "freshet");
        assert_eq!(v["header"]["source"]["pluginVersion"], "ab12");
        assert_eq!(v["header"]["flowId"], "flow1");
        assert_eq!(v["header"]["imsOrgId"], "ORG@AdobeOrg");
        assert_eq!(
            v["header"]["schemaRef"]["id"],
            "https://ns.adobe.com/acme/schemas/1"
        );
        assert_eq!(v["body"]["xdmMeta"]["schemaRef"], v["header"]["schemaRef"]);
        let e = &v["body"]["xdmEntity"];
        assert_eq!(e["_id"], "abc");
        assert_eq!(e["timestamp"], "2023-11-14T22:13:20.500Z");
        assert_eq!(e["eventType"], "commerce.purchases");
        assert_eq!(e["_acme"]["x"], 1);
    }

    #[test]
    fn empty_body_renders_valid_json() {
        let b = EnvelopeBuilder::new(
            &SchemaRef {
                id: "https://x/s".into(),
            },
            "O@AdobeOrg",
            "d",
            None,
            "s",
        );
        let event = Event {
            id: "i".into(),
            timestamp: Instant {
                seconds: -1,
                nanos: 0,
            },
            body: "{}".into(),
        };
        let v: serde_json::Value = serde_json::from_str(&b.render(&event, "00")).unwrap();
        assert_eq!(v["body"]["xdmEntity"]["timestamp"], "1969-12-31T23:59:59Z");
        assert!(v["header"].get("flowId").is_none());
    }
}
