//! The served OpenAPI document: `openapi.json` with this server's limits, the model's defaults
//! and the loaded datastores' names written into its shared schemas, so that the document states
//! every range and allowed value that the handlers enforce (and nothing they refuse).

use serde_json::{json, Value};

use super::AppState;

const TEMPLATE: &str = include_str!("openapi.json");

/// The document for this server as it stands (before the models load: its limits only).
pub(crate) fn document(state: &AppState) -> Value {
    let mut doc: Value = serde_json::from_str(TEMPLATE).expect("openapi.json is valid JSON");
    let cfg = &state.config;
    let schemas = &mut doc["components"]["schemas"];
    schemas["K"]["maximum"] = json!(cfg.max_k);
    schemas["Beams"]["maximum"] = json!(cfg.max_beams);
    schemas["MaxNewTokens"]["maximum"] = json!(cfg.max_new_tokens);
    schemas["ImageFiles"]["maxItems"] = json!(cfg.max_images_per_request);
    schemas["QueryTexts"]["maxItems"] = json!(cfg.max_images_per_request);
    if let Some(models) = state.models.get() {
        let generation = models.captioner().default_generation();
        schemas["K"]["default"] = json!(models.captioner().model().config.k.min(cfg.max_k));
        schemas["Beams"]["default"] = json!(generation.num_beams.min(cfg.max_beams));
        schemas["MaxNewTokens"]["default"] =
            json!(generation.max_new_tokens.min(cfg.max_new_tokens));
        schemas["EarlyStopping"]["default"] = json!(generation.early_stopping);
    }
    if let Some(stores) = state.datastores.get() {
        let names: Vec<&str> = stores.iter().map(|d| d.name.as_str()).collect();
        let name = &mut schemas["DatastoreName"];
        if names.is_empty() {
            // No value is allowed: every datastore name is refused.
            name["not"] = json!({});
            name["description"] = json!("No datastore is loaded: give captions or no_retrieval");
        } else {
            name["enum"] = json!(names);
            name["default"] = json!(names[0]);
        }
    }
    if cfg.access.has_keys() {
        // A key is required on every /v1 operation (and /metrics when protected); without keys
        // the document declares no security.
        let required = json!([{"bearerAuth": []}]);
        for (path, ops) in doc["paths"].as_object_mut().expect("paths").iter_mut() {
            let guarded =
                path.starts_with("/v1/") || (path == "/metrics" && cfg.access.protect_metrics);
            if !guarded {
                continue;
            }
            for op in ops.as_object_mut().expect("operations").values_mut() {
                op["security"] = required.clone();
                op["responses"]["401"] = json!({"$ref": "#/components/responses/Unauthorized"});
            }
        }
    }
    doc
}
