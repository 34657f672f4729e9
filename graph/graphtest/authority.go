package graphtest

import (
	"crypto/subtle"
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The authority: /{tenant}/v2.0/.well-known/openid-configuration,
// /{tenant}/oauth2/v2.0/token and /common/discovery/instance.

func (s *Server) serveOpenIDConfiguration(w http.ResponseWriter, r *http.Request, tenant string) {
	base := s.URL + "/" + tenant
	writeJSON(w, http.StatusOK, map[string]any{
		"issuer":                                base + "/v2.0",
		"authorization_endpoint":                base + "/oauth2/v2.0/authorize",
		"token_endpoint":                        base + "/oauth2/v2.0/token",
		"device_authorization_endpoint":         base + "/oauth2/v2.0/devicecode",
		"jwks_uri":                              base + "/discovery/v2.0/keys",
		"response_types_supported":              []string{"code", "id_token", "code id_token", "id_token token"},
		"subject_types_supported":               []string{"pairwise"},
		"id_token_signing_alg_values_supported": []string{"RS256"},
		"token_endpoint_auth_methods_supported": []string{"client_secret_post", "private_key_jwt", "client_secret_basic"},
		"tenant_region_scope":                   "NA",
		"cloud_instance_name":                   "graphtest",
	})
	s.record(Call{Time: time.Now(), Method: r.Method, Path: r.URL.Path, Operation: OpDiscovery, Status: http.StatusOK})
}

func (s *Server) serveInstanceDiscovery(w http.ResponseWriter, r *http.Request) {
	host := strings.TrimPrefix(s.URL, "https://")
	tenant := "common"
	writeJSON(w, http.StatusOK, map[string]any{
		"tenant_discovery_endpoint": s.URL + "/" + tenant + "/v2.0/.well-known/openid-configuration",
		"api-version":               "1.1",
		"metadata": []map[string]any{{
			"preferred_network": host, "preferred_cache": host, "aliases": []string{host},
		}},
	})
	s.record(Call{Time: time.Now(), Method: r.Method, Path: r.URL.Path, Operation: OpDiscovery, Status: http.StatusOK})
}

// oauthError writes an Entra-style OAuth error.
func oauthError(w http.ResponseWriter, status int, code string, aadsts int, description string) {
	now := time.Now().UTC()
	writeJSON(w, status, map[string]any{
		"error": code,
		"error_description": "AADSTS" + strconv.Itoa(aadsts) + ": " + description +
			"\r\nTrace ID: " + newUUID() + "\r\nCorrelation ID: " + newUUID() +
			"\r\nTimestamp: " + now.Format("2006-01-02 15:04:05Z"),
		"error_codes":    []int{aadsts},
		"timestamp":      now.Format("2006-01-02 15:04:05Z"),
		"trace_id":       newUUID(),
		"correlation_id": newUUID(),
		"error_uri":      "https://login.microsoftonline.com/error?code=" + strconv.Itoa(aadsts),
	})
}

func (s *Server) serveToken(w http.ResponseWriter, r *http.Request, tenant string) {
	call := Call{Time: time.Now(), Method: r.Method, Path: r.URL.Path, Operation: OpToken,
		ClientRequestID: r.Header.Get("client-request-id")}
	status := s.token(w, r, tenant)
	call.Status = status
	call.TokenValid = status == http.StatusOK
	s.record(call)
}

// token answers a token request and returns the status it answered.
func (s *Server) token(w http.ResponseWriter, r *http.Request, tenant string) int {
	if r.Method != http.MethodPost {
		oauthError(w, http.StatusMethodNotAllowed, "invalid_request", 900561, "The endpoint only accepts POST requests.")
		return http.StatusMethodNotAllowed
	}
	if err := r.ParseForm(); err != nil {
		oauthError(w, http.StatusBadRequest, "invalid_request", 900144, "The request body must be form-encoded.")
		return http.StatusBadRequest
	}
	f := r.PostForm
	switch {
	case !strings.EqualFold(tenant, s.TenantID):
		oauthError(w, http.StatusBadRequest, "invalid_request", 90002, "Tenant '"+tenant+"' not found.")
		return http.StatusBadRequest
	case f.Get("grant_type") != "client_credentials":
		oauthError(w, http.StatusBadRequest, "unsupported_grant_type", 70003, "The app requested an unsupported grant type.")
		return http.StatusBadRequest
	case !slices.ContainsFunc(strings.Fields(f.Get("scope")), func(s string) bool { return strings.HasSuffix(s, "/.default") }):
		oauthError(w, http.StatusBadRequest, "invalid_scope", 1002012, "The provided value for scope is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier.")
		return http.StatusBadRequest
	case f.Get("client_id") != s.ClientID:
		oauthError(w, http.StatusBadRequest, "unauthorized_client", 700016, "Application with identifier '"+f.Get("client_id")+"' was not found in the directory.")
		return http.StatusBadRequest
	}
	secretOK := subtle.ConstantTimeCompare([]byte(f.Get("client_secret")), []byte(s.ClientSecret)) == 1
	assertionOK := f.Get("client_assertion") != "" &&
		f.Get("client_assertion_type") == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
	if s.failTokens.Load() || !secretOK && !assertionOK {
		oauthError(w, http.StatusUnauthorized, "invalid_client", 7000215,
			"Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '"+s.ClientID+"'.")
		return http.StatusUnauthorized
	}
	token := "gt." + randomHex(24)
	issued := time.Now()
	rejectAt := issued.Add(s.lifetime)
	if s.expireEarly.Load() {
		rejectAt = issued.Add(100 * time.Millisecond)
	}
	s.tokens.Store(token, tokenInfo{rejectAt: rejectAt})
	if s.issued.Add(1)%1024 == 0 { // forget dead tokens now and then: fake-graph runs for long
		s.tokens.Range(func(k, v any) bool {
			if issued.After(v.(tokenInfo).rejectAt) {
				s.tokens.Delete(k)
			}
			return true
		})
	}
	seconds := max(int(s.lifetime/time.Second), 1)
	writeJSON(w, http.StatusOK, map[string]any{
		"token_type":     "Bearer",
		"expires_in":     seconds,
		"ext_expires_in": seconds,
		"access_token":   token,
	})
	return http.StatusOK
}

// tokenValid reports whether the request carries a live bearer token.
func (s *Server) tokenValid(r *http.Request) bool {
	h := r.Header.Get("Authorization")
	if len(h) < 7 || !strings.EqualFold(h[:7], "bearer ") {
		return false
	}
	v, ok := s.tokens.Load(h[7:])
	return ok && time.Now().Before(v.(tokenInfo).rejectAt)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, _ := json.Marshal(v) // maps of strings and numbers always marshal
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
