# An OPA-Envoy style policy, as it would run behind Envoy's ext_authz — unchanged under Portcullis.
# Build:  opa build -t wasm -e envoy/authz/allow -o authz.tar.gz policies/rego/
package envoy.authz

import rego.v1

default allow := false

http := input.attributes.request.http

# The verified JWT's claims, where Envoy's jwt_authn filter (and Portcullis) put them.
claims := input.attributes.metadataContext.filterMetadata["envoy.filters.http.jwt_authn"].payload

# Read-only access for the web front end (its SPIFFE ID, scheme included, as Envoy gives it).
allow if {
	input.attributes.source.principal == "spiffe://example.org/ns/default/sa/web"
	http.method in {"GET", "HEAD"}
	input.parsed_path[0] == "api"
}

# Writers (by token claim) may write to the API, whoever calls.
allow if {
	http.method in {"POST", "PUT", "DELETE"}
	input.parsed_path[0] == "api"
	"writers" in claims.groups
}

# Role data from data.json: the teams allowed to reach a service's admin pages.
allow if {
	input.parsed_path[0] == "admin"
	some team in data.admin_teams
	claims.team == team
}
