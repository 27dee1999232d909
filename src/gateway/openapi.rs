//! `/openapi.json`: the machine-readable contract, generated from the handlers' own
//! annotations and the protocol types, so it cannot drift from what the server does.

use axum::{
    http::header,
    response::{IntoResponse, Response},
};
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "hail",
        description = "Ride-hailing dispatch: REST + WebSocket contract v1. \
        WebSockets: GET /v1/driver/ws (driver), GET /v1/trips/{id}/ws?after=N (trip stream), \
        GET /v1/ops/ws (operators)."
    ),
    paths(
        super::rest::create_passenger,
        super::rest::create_driver,
        super::rest::create_trip,
        super::rest::get_trip,
        super::rest::trip_events,
        super::rest::cancel_trip,
        super::rest::arrive,
        super::rest::start,
        super::rest::complete,
        super::rest::assign,
        super::rest::accept_offer,
        super::rest::decline_offer,
        super::rest::snapshot,
        super::rest::cluster,
        super::rest::search,
        super::rest::driver_card,
        super::rest::candidates,
        super::rest::ticket,
        super::rest::healthz,
        super::rest::readyz,
        super::rest::metrics,
        super::driver_socket::driver_socket,
        super::trip_stream::trip_socket,
        super::ops_stream::ops_socket
    ),
    components(
        schemas(
            crate::protocol::ServerMessage,
            crate::protocol::DriverMessage,
            crate::protocol::operators::OpsMessage
        ),
        responses(crate::protocol::rest::RateLimited, crate::protocol::rest::Unavailable)
    )
)]
pub struct ApiDoc;

pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    let mut components = doc.components.take().unwrap_or_default();
    components.add_security_scheme(
        "bearer",
        utoipa::openapi::security::SecurityScheme::Http(utoipa::openapi::security::Http::new(
            utoipa::openapi::security::HttpAuthScheme::Bearer,
        )),
    );
    doc.components = Some(components);
    doc
}

pub async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document().to_pretty_json().unwrap_or_default(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use crate::protocol::rest::PRINTABLE_TEXT_PATTERN;

    /// utoipa takes only a literal for a pattern, so each text field repeats it; the
    /// server checks them all with one function, so the document must say one thing.
    #[test]
    fn every_text_field_states_the_one_printable_text_pattern() {
        let doc = serde_json::to_value(super::document()).unwrap();
        let schemas = &doc["components"]["schemas"];
        for (schema, field) in [
            ("PassengerSignup", "name"),
            ("DriverSignup", "name"),
            ("Vehicle", "plate"),
            ("CancelRequest", "reason"),
            ("AssignRequest", "reason"),
        ] {
            assert_eq!(
                schemas[schema]["properties"][field]["pattern"], PRINTABLE_TEXT_PATTERN,
                "{schema}.{field}"
            );
        }
    }
}
