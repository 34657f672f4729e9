package graphtest

import (
	"hash/fnv"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/reprocessor/reprocessor/idlist"
)

const (
	v1Collection   = "/v1.0/identityGovernance/entitlementManagement/assignments"
	betaCollection = "/beta/identityGovernance/entitlementManagement/accessPackageAssignments"
	diagnostic     = `{"ServerInfo":{"DataCenter":"Local","Slice":"E","Ring":"0","ScaleUnit":"000","RoleInstance":"graphtest","ADSiteName":"LOCAL"}}`
)

// Assignment is a stored access package assignment.
type Assignment struct {
	ID              string
	AccessPackageID string
	State           string // v1.0 camelCase, e.g. "delivered"; beta answers it in PascalCase
	Status          string // free text, e.g. "Delivered"
	// The target (accessPackageSubject) and schedule, answered with $expand=target (v1.0).
	TargetID      string    // the target's objectId: a user or service principal
	PrincipalName string    // the target's principalName
	StartDateTime time.Time // schedule.startDateTime; zero: not answered
}

// AddAssignments stores assignments (replacing any with the same id); they are listable.
// Ids are lower-cased; an empty State is "delivered".
func (s *Server) AddAssignments(as ...Assignment) {
	s.storeMu.Lock()
	defer s.storeMu.Unlock()
	for _, a := range as {
		a.ID = strings.ToLower(a.ID)
		a.AccessPackageID = strings.ToLower(a.AccessPackageID)
		a.TargetID = strings.ToLower(a.TargetID)
		if a.State == "" {
			a.State = "delivered"
		}
		if a.Status == "" {
			a.Status = "Delivered"
		}
		if _, ok := s.store[a.ID]; !ok {
			s.order = append(s.order, a.ID)
			if a.AccessPackageID != "" {
				s.byPackage[a.AccessPackageID] = append(s.byPackage[a.AccessPackageID], a.ID)
			}
		}
		s.store[a.ID] = &a
	}
}

// SetState changes a stored assignment's state and status, adding it if it is not stored.
func (s *Server) SetState(id, state, status string) {
	id = strings.ToLower(id)
	s.storeMu.Lock()
	a, ok := s.store[id]
	if ok {
		a.State, a.Status = state, status
		s.storeMu.Unlock()
		return
	}
	s.storeMu.Unlock()
	s.AddAssignments(Assignment{ID: id, State: state, Status: status})
}

// Assignment returns the assignment id as the server sees it, and whether it exists.
func (s *Server) Assignment(id string) (Assignment, bool) {
	id = strings.ToLower(id)
	s.storeMu.RLock()
	a, ok := s.store[id]
	s.storeMu.RUnlock()
	if ok {
		return *a, true
	}
	if s.strict || s.unknown(id) {
		return Assignment{}, false
	}
	return Assignment{ID: id, State: "delivered", Status: "Delivered"}, true
}

// unknown reports whether id falls in the UnknownRate fraction, from its hash.
func (s *Server) unknown(id string) bool {
	f := s.unknownRate.Load()
	if f <= 0 {
		return false
	}
	h := fnv.New64a()
	_, _ = h.Write([]byte(id))
	return float64(h.Sum64()%1_000_000) < f*1_000_000
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if fn := s.intercept.Load(); fn != nil && (*fn)(w, r) {
		return
	}
	p := r.URL.Path
	switch {
	case strings.HasPrefix(p, v1Collection):
		s.serveGraph(w, r, "v1.0", strings.TrimPrefix(p, v1Collection))
		return
	case strings.HasPrefix(p, betaCollection):
		s.serveGraph(w, r, "beta", strings.TrimPrefix(p, betaCollection))
		return
	case strings.HasPrefix(p, "/v1.0/"):
		if op, id, sub := tenantRoute(r.Method, p); op != "" {
			s.serveTenant(w, r, op, id, sub)
			return
		}
	case p == "/common/discovery/instance":
		s.serveInstanceDiscovery(w, r)
		return
	}
	if tenant, rest, ok := strings.Cut(strings.TrimPrefix(p, "/"), "/"); ok && tenant != "" {
		switch rest {
		case "v2.0/.well-known/openid-configuration":
			s.serveOpenIDConfiguration(w, r, tenant)
			return
		case "oauth2/v2.0/token":
			s.serveToken(w, r, tenant)
			return
		}
	}
	requestID := newUUID()
	w.Header().Set("request-id", requestID)
	s.graphError(w, r, http.StatusNotFound, "UnknownRoute", "The requested resource does not exist.", requestID)
	s.record(Call{Time: time.Now(), Method: r.Method, Path: p, Operation: OpOther, Status: http.StatusNotFound,
		ClientRequestID: r.Header.Get("client-request-id"), RequestID: requestID})
}

// serveGraph answers a call under an assignments collection; rest is the path after it.
func (s *Server) serveGraph(w http.ResponseWriter, r *http.Request, version, rest string) {
	call := Call{Time: time.Now(), Method: r.Method, Path: r.URL.Path, APIVersion: version,
		ClientRequestID: r.Header.Get("client-request-id"), RequestID: newUUID()}
	switch id, action, _ := strings.Cut(strings.TrimPrefix(rest, "/"), "/"); {
	case rest == "" && r.Method == http.MethodGet:
		call.Operation = OpListAssignments
	case strings.HasPrefix(rest, "/") && action == "" && r.Method == http.MethodGet:
		call.Operation, call.AssignmentID = OpGetAssignment, strings.ToLower(id)
	case strings.HasPrefix(rest, "/") && action == "reprocess" && r.Method == http.MethodPost:
		call.Operation, call.AssignmentID = OpReprocess, strings.ToLower(id)
	default:
		call.Operation = OpOther
	}
	n := s.inFlight.Add(1)
	defer s.inFlight.Add(-1)
	for was := s.peakInFlight.Load(); n > was && !s.peakInFlight.CompareAndSwap(was, n); was = s.peakInFlight.Load() {
	}
	s.delay(r)
	call.TokenValid = s.tokenValid(r)
	call.Status = s.answer(w, r, &call)
	s.record(call)
}

// PeakInFlight is the most Graph calls (not token requests) the server was answering at
// once.
func (s *Server) PeakInFlight() int { return int(s.peakInFlight.Load()) }

// delay sleeps for the configured latency, or until the client goes away.
func (s *Server) delay(r *http.Request) {
	lo, hi := time.Duration(s.latencyMin.Load()), time.Duration(s.latencyMax.Load())
	d := lo
	if hi > lo {
		d = lo + rand.N(hi-lo+1)
	}
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.Context().Done():
	}
}

// answer writes the answer to a Graph call and returns its status.
func (s *Server) answer(w http.ResponseWriter, r *http.Request, c *Call) int {
	h := w.Header()
	h.Set("request-id", c.RequestID)
	if c.ClientRequestID != "" {
		h.Set("client-request-id", c.ClientRequestID)
	}
	h.Set("x-ms-ags-diagnostic", diagnostic)
	if c.Operation == OpOther {
		return s.graphError(w, r, http.StatusBadRequest, "BadRequest", "Unsupported request: "+r.Method+" "+r.URL.Path, c.RequestID)
	}
	if status, done := s.commonFaults(w, r, c); done {
		return status
	}
	if c.Operation == OpReprocess && take(&s.storm503) {
		return s.graphError(w, r, http.StatusServiceUnavailable, "ServiceUnavailable", "The service is temporarily unavailable.", c.RequestID)
	}
	if c.Operation == OpListAssignments {
		return s.list(w, r, c)
	}
	if !validID(c.AssignmentID) {
		return s.graphError(w, r, http.StatusBadRequest, "BadRequest", "Invalid id '"+c.AssignmentID+"'.", c.RequestID)
	}
	if status := s.answerFor(c.AssignmentID); status != 0 && (c.Operation == OpReprocess || status == 400 || status == 404) {
		code, msg := errorFor(status)
		return s.graphError(w, r, status, code, msg, c.RequestID)
	}
	a, ok := s.Assignment(c.AssignmentID)
	if state, status, exists, applies := s.lifecycleState(c.AssignmentID, s.now()); ok && applies {
		a.State, a.Status, ok = state, status, exists
	}
	if !ok {
		return s.graphError(w, r, http.StatusNotFound, "ResourceNotFound", "The assignment '"+c.AssignmentID+"' was not found.", c.RequestID)
	}
	if c.Operation == OpReprocess {
		now := s.now()
		s.reprocessed(c.AssignmentID, now)
		s.restoreAfterReprocess(c.AssignmentID, now)
		w.WriteHeader(http.StatusAccepted)
		return http.StatusAccepted
	}
	body := assignmentJSON(a, c.APIVersion, s.URL, c.APIVersion == "v1.0" && expandsTarget(r))
	if c.APIVersion == "v1.0" && strings.Contains(r.URL.Query().Get("$expand"), "accessPackage") && a.AccessPackageID != "" {
		body["accessPackage"] = map[string]any{"id": a.AccessPackageID}
	}
	writeJSON(w, http.StatusOK, body)
	return http.StatusOK
}

// expandsTarget reports whether the call asks for $expand=target.
func expandsTarget(r *http.Request) bool {
	for _, e := range strings.Split(r.URL.Query().Get("$expand"), ",") {
		if name, _, _ := strings.Cut(strings.TrimSpace(e), "("); name == "target" {
			return true
		}
	}
	return false
}

// commonFaults answers a Graph call with the faults configured for every call (a bad
// token, the rate limit, 429s, 403s, random faults) and reports whether it did.
func (s *Server) commonFaults(w http.ResponseWriter, r *http.Request, c *Call) (int, bool) {
	h := w.Header()
	h.Set("request-id", c.RequestID)
	if c.ClientRequestID != "" {
		h.Set("client-request-id", c.ClientRequestID)
	}
	h.Set("x-ms-ags-diagnostic", diagnostic)
	if !c.TokenValid {
		h.Set("WWW-Authenticate", `Bearer realm="", authorization_uri="`+s.URL+`/common/oauth2/authorize", client_id="00000003-0000-0000-c000-000000000000"`)
		return s.graphError(w, r, http.StatusUnauthorized, "InvalidAuthenticationToken", "Access token has expired or is not yet valid.", c.RequestID), true
	}
	if lim := s.limiter.Load(); lim != nil {
		now := time.Now()
		res := lim.ReserveN(now, 1)
		if d := res.DelayFrom(now); !res.OK() || d > 0 {
			res.CancelAt(now)
			h.Set("Retry-After", strconv.FormatFloat(max(d.Seconds(), 0.001), 'f', 3, 64))
			return s.graphError(w, r, http.StatusTooManyRequests, "TooManyRequests", "Too many requests.", c.RequestID), true
		}
	}
	if take(&s.throttle429) {
		if ra := s.throttleRetryAfter.Load(); ra != nil && *ra != "" {
			h.Set("Retry-After", *ra)
		}
		return s.graphError(w, r, http.StatusTooManyRequests, "TooManyRequests", "Too many requests.", c.RequestID), true
	}
	if take(&s.forbid) {
		return s.graphError(w, r, http.StatusForbidden, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.", c.RequestID), true
	}
	if t, u := s.throttleRate.Load(), s.unavailableRate.Load(); t > 0 || u > 0 {
		x := rand.Float64()
		switch {
		case x < t:
			h.Set("Retry-After", *s.randomRetryAfter.Load())
			return s.graphError(w, r, http.StatusTooManyRequests, "TooManyRequests", "Too many requests.", c.RequestID), true
		case x < t+u:
			h.Set("Retry-After", *s.randomRetryAfter.Load())
			return s.graphError(w, r, http.StatusServiceUnavailable, "ServiceUnavailable", "The service is temporarily unavailable.", c.RequestID), true
		}
	}
	return 0, false
}

func (s *Server) answerFor(id string) int {
	s.answersMu.RLock()
	defer s.answersMu.RUnlock()
	return s.answers[id]
}

func errorFor(status int) (code, message string) {
	switch status {
	case http.StatusBadRequest:
		return "BadRequest", "The request is invalid."
	case http.StatusUnauthorized:
		return "InvalidAuthenticationToken", "Access token is invalid."
	case http.StatusForbidden:
		return "Authorization_RequestDenied", "Insufficient privileges to complete the operation."
	case http.StatusNotFound:
		return "ResourceNotFound", "The assignment was not found."
	case http.StatusConflict:
		return "Conflict", "The assignment is not in a state that allows reprocessing."
	case http.StatusTooManyRequests:
		return "TooManyRequests", "Too many requests."
	case http.StatusInternalServerError:
		return "UnknownError", ""
	case http.StatusServiceUnavailable:
		return "ServiceUnavailable", "The service is temporarily unavailable."
	case http.StatusGatewayTimeout:
		return "GatewayTimeout", "The gateway timed out."
	}
	return "UnknownError", http.StatusText(status)
}

// graphError writes Graph's error body and returns status.
func (s *Server) graphError(w http.ResponseWriter, r *http.Request, status int, code, message, requestID string) int {
	writeJSON(w, status, map[string]any{"error": map[string]any{
		"code": code, "message": message,
		"innerError": map[string]string{
			"date":              time.Now().UTC().Format("2006-01-02T15:04:05"),
			"request-id":        requestID,
			"client-request-id": r.Header.Get("client-request-id"),
		},
	}})
	return status
}

func assignmentJSON(a Assignment, version, base string, target bool) map[string]any {
	if version == "beta" {
		return map[string]any{
			"@odata.context":   base + "/beta/$metadata#identityGovernance/entitlementManagement/accessPackageAssignments/$entity",
			"id":               a.ID,
			"accessPackageId":  a.AccessPackageID,
			"assignmentState":  pascal(a.State),
			"assignmentStatus": a.Status,
		}
	}
	m := map[string]any{
		"@odata.context": base + "/v1.0/$metadata#identityGovernance/entitlementManagement/assignments/$entity",
		"id":             a.ID,
		"state":          a.State,
		"status":         a.Status,
	}
	if !a.StartDateTime.IsZero() {
		m["schedule"] = map[string]any{"startDateTime": a.StartDateTime.UTC().Format(time.RFC3339), "expiration": map[string]any{"type": "noExpiration"}}
	}
	if target {
		if a.TargetID == "" {
			m["target"] = nil
		} else {
			m["target"] = map[string]any{"id": stableID(a.TargetID, "subject", 0), "objectId": a.TargetID,
				"principalName": a.PrincipalName, "displayName": a.PrincipalName, "subjectType": "user", "subjectLifecycle": "governed"}
		}
	}
	return m
}

// pascal upper-cases the first letter: beta's form of a v1.0 state.
func pascal(s string) string {
	r, n := utf8.DecodeRuneInString(s)
	if n == 0 {
		return s
	}
	return string(unicode.ToUpper(r)) + s[n:]
}

// list answers a list call: $filter (state, assignmentState, accessPackage/id,
// accessPackageId; "and"), $top, and pages through $skiptoken.
func (s *Server) list(w http.ResponseWriter, r *http.Request, c *Call) int {
	q := r.URL.Query()
	match, pkg, err := parseFilter(q.Get("$filter"))
	if err != nil {
		return s.graphError(w, r, http.StatusBadRequest, "BadRequest", "Invalid filter clause: "+err.Error(), c.RequestID)
	}
	size := s.pageSize
	if t := q.Get("$top"); t != "" {
		n, err := strconv.Atoi(t)
		if err != nil || n < 1 || n > 999 {
			return s.graphError(w, r, http.StatusBadRequest, "BadRequest", "Invalid $top value.", c.RequestID)
		}
		size = min(size, n)
	}
	skip := 0
	if t := q.Get("$skiptoken"); t != "" {
		n, err := strconv.Atoi(t)
		if err != nil || n < 0 {
			return s.graphError(w, r, http.StatusBadRequest, "BadRequest", "Invalid $skiptoken.", c.RequestID)
		}
		skip = n
	}
	s.storeMu.RLock()
	var matched []Assignment
	ids := s.order
	if pkg != "" {
		ids = s.byPackage[strings.ToLower(pkg)]
	}
	for _, id := range ids {
		if a := *s.store[id]; match(a) {
			matched = append(matched, a)
		}
	}
	s.storeMu.RUnlock()
	page := matched[min(skip, len(matched)):min(skip+size, len(matched))]
	values := make([]map[string]any, len(page))
	for i, a := range page {
		values[i] = assignmentJSON(a, c.APIVersion, s.URL, expandsTarget(r))
		delete(values[i], "@odata.context")
	}
	body := map[string]any{"value": values}
	if skip+size < len(matched) {
		next := url.Values{}
		for k, v := range q {
			next[k] = slices.Clone(v)
		}
		next.Set("$skiptoken", strconv.Itoa(skip+size))
		body["@odata.nextLink"] = s.URL + r.URL.Path + "?" + strings.ReplaceAll(next.Encode(), "+", "%20")
	}
	writeJSON(w, http.StatusOK, body)
	return http.StatusOK
}

// parseFilter understands clauses "field eq 'literal'" joined by "and", each optionally in
// parentheses.
func parseFilter(f string) (match func(Assignment) bool, pkg string, err error) {
	type clause struct{ field, value string }
	var clauses []clause
	f = strings.TrimSpace(f)
	for f != "" {
		f = strings.TrimSpace(strings.TrimLeft(f, "( "))
		field, rest, ok := strings.Cut(f, " eq '")
		if !ok {
			return nil, "", errBadFilter
		}
		// Read the literal: '' is a quote inside it.
		var value strings.Builder
		i := 0
		for ; i < len(rest); i++ {
			if rest[i] == '\'' {
				if i+1 < len(rest) && rest[i+1] == '\'' {
					value.WriteByte('\'')
					i++
					continue
				}
				break
			}
			value.WriteByte(rest[i])
		}
		if i >= len(rest) {
			return nil, "", errBadFilter
		}
		clauses = append(clauses, clause{strings.TrimSpace(field), value.String()})
		f = strings.TrimSpace(strings.TrimLeft(rest[i+1:], ") "))
		if f == "" {
			break
		}
		after, ok := strings.CutPrefix(f, "and ")
		if !ok {
			return nil, "", errBadFilter
		}
		f = after
	}
	for _, c := range clauses {
		switch c.field {
		case "accessPackage/id", "accessPackageId":
			if pkg != "" && !strings.EqualFold(pkg, c.value) {
				return func(Assignment) bool { return false }, "", nil
			}
			pkg = c.value
		case "state", "assignmentState":
		default:
			return nil, "", errBadFilter
		}
	}
	return func(a Assignment) bool {
		for _, c := range clauses {
			switch c.field {
			case "state":
				if a.State != c.value {
					return false
				}
			case "assignmentState":
				if pascal(a.State) != c.value {
					return false
				}
			default:
				if !strings.EqualFold(a.AccessPackageID, c.value) {
					return false
				}
			}
		}
		return true
	}, pkg, nil
}

type filterError string

func (e filterError) Error() string { return string(e) }

const errBadFilter = filterError("only clauses field eq 'value' on state, assignmentState, accessPackage/id or accessPackageId, joined by and, are supported")

func validID(s string) bool {
	_, ok := idlist.Parse(s)
	return ok
}
