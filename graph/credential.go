package graph

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/cenkalti/backoff/v4"
	"golang.org/x/sync/singleflight"
)

// Environment variables read by NewCredential (azidentity's names).
const (
	EnvTenantID            = "AZURE_TENANT_ID"
	EnvClientID            = "AZURE_CLIENT_ID"
	EnvClientSecret        = "AZURE_CLIENT_SECRET"
	EnvCertificatePath     = "AZURE_CLIENT_CERTIFICATE_PATH"
	EnvCertificatePassword = "AZURE_CLIENT_CERTIFICATE_PASSWORD"
	EnvFederatedTokenFile  = "AZURE_FEDERATED_TOKEN_FILE"
	EnvAuthorityHost       = "AZURE_AUTHORITY_HOST"
)

// Credential kinds, as reported by Credential.Kind.
const (
	KindClientSecret      = "client secret"
	KindClientCertificate = "client certificate"
	KindWorkloadIdentity  = "workload identity"
	KindManagedIdentity   = "managed identity"
	KindAzureCLI          = "Azure CLI (az login)"
	KindAzureDeveloperCLI = "Azure Developer CLI (azd auth login)"
	KindDeveloper         = "developer login (az, then azd)"
)

// Developer logins, chosen only by REPROCESSOR_CREDENTIAL (CredentialOptions.Login): never
// picked by the AZURE_* variables, and refused inside Kubernetes.
const (
	LoginAuto     = "auto"      // the AZURE_* variables decide (the default)
	LoginAzureCLI = "azure-cli" // the developer's own "az login"
	LoginAzd      = "azd"       // the developer's own "azd auth login"
	LoginDev      = "developer" // az, then azd, as DefaultAzureCredential's last links
)

// Logins lists the values of CredentialOptions.Login.
var Logins = []string{LoginAuto, LoginAzureCLI, LoginAzd, LoginDev}

// maxRefreshMargin is how long before its expiry a token is replaced.
const maxRefreshMargin = 5 * time.Minute

// fetchTimeout bounds one token request, whoever waits for it.
const fetchTimeout = time.Minute

// maxAuthorityBody bounds what is read of an answer of the authority (or of the managed
// identity endpoint).
const maxAuthorityBody = 1 << 20

// limitBodies is a transport whose answers' bodies fail past max bytes, so that a hostile
// authority cannot make the credential buffer an endless answer.
type limitBodies struct {
	next http.RoundTripper
	max  int64
}

func (l limitBodies) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := l.next.RoundTrip(r)
	if err == nil && resp.Body != nil {
		resp.Body = &limitedBody{ReadCloser: resp.Body, left: l.max}
	}
	return resp, err
}

type limitedBody struct {
	io.ReadCloser
	left int64
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, fmt.Errorf("the answer is longer than %d bytes", maxAuthorityBody)
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.ReadCloser.Read(p)
	b.left -= int64(n)
	return n, err
}

// minTokenLifetime is the shortest lifetime of a token that is used: one that expires
// sooner (expires_in 0 or negative from a broken authority) counts as a failed request, so
// that it is retried with backoff instead of at once, for ever.
const minTokenLifetime = 2 * time.Second

// errShortLived is the cause of a token refused for its short lifetime.
var errShortLived = errors.New("the authority issued a token that expires at once")

// CredentialOptions configures NewCredential.
type CredentialOptions struct {
	// GraphURL is the Graph base URL whose "/.default" scope is asked for; default the
	// cloud's GraphURL.
	GraphURL string
	// HTTPClient, if set, carries the requests to the authority (e.g. one trusting a test CA).
	HTTPClient *http.Client
	// Logger receives token failures (WARN) and recoveries; default discards.
	Logger *slog.Logger
	// OnReady, if set, is called each time a token is obtained while no valid one was held
	// (the first token, and the first after an outage), outside the credential's lock, so
	// that work held back for want of a token resumes at once.
	OnReady func()
	// MinBackoff and MaxBackoff bound the delay between failed token requests; defaults 1s
	// and 1m.
	MinBackoff, MaxBackoff time.Duration
	// Login is one of Logins; "" is LoginAuto.
	Login string
}

// Credential is a TokenSource backed by an azidentity credential chosen from the standard
// AZURE_* variables. It caches the current token and replaces it shortly before it expires;
// after a failure it does not ask the authority again before its backoff delay is over.
// It is safe for concurrent use.
type Credential struct {
	kind    string
	scope   string
	newCred func() (azcore.TokenCredential, error)
	secrets []string
	log     *slog.Logger
	now     func() time.Time
	onReady func() // nil: no one to tell
	flight  singleflight.Group

	// life bounds every token request: Close cancels it and waits for those under way, so
	// that none outlives the credential (a request may otherwise sit in azcore's retry
	// backoff for up to fetchTimeout after its callers have gone).
	life     context.Context
	stop     context.CancelFunc
	requests sync.WaitGroup
	closed   bool // guarded by mu

	mu        sync.Mutex
	cred      azcore.TokenCredential
	token     string
	expires   time.Time
	refreshAt time.Time
	lastErr   error
	nextTry   time.Time
	backoff   *backoff.ExponentialBackOff
}

// NewCredential returns a Credential configured by env (os.Getenv if nil): a client secret
// (AZURE_CLIENT_SECRET), else a certificate (AZURE_CLIENT_CERTIFICATE_PATH, with
// AZURE_CLIENT_CERTIFICATE_PASSWORD), else workload identity (AZURE_FEDERATED_TOKEN_FILE),
// else managed identity (with AZURE_CLIENT_ID as a user-assigned identity, if set). The
// authority is AZURE_AUTHORITY_HOST (https only; instance discovery is then disabled), else
// the cloud's.
func NewCredential(env func(string) string, c Cloud, opts CredentialOptions) (*Credential, error) {
	if env == nil {
		env = os.Getenv
	}
	graphURL, err := parseBaseURL(cmp.Or(opts.GraphURL, c.GraphURL, "https://graph.microsoft.com"), false)
	if err != nil {
		return nil, fmt.Errorf("credential: graph URL: %w", err)
	}
	authority := cmp.Or(c.AuthorityHost, "https://login.microsoftonline.com/")
	customAuthority := env(EnvAuthorityHost) != ""
	if customAuthority {
		u, err := url.Parse(env(EnvAuthorityHost))
		if err != nil || u.Scheme != "https" || u.Host == "" {
			return nil, fmt.Errorf("credential: %s %q: must be an https URL", EnvAuthorityHost, env(EnvAuthorityHost))
		}
		authority = strings.TrimRight(u.String(), "/") + "/"
	}
	// Token requests follow no redirect either: a 307 would re-post the client secret or
	// assertion to wherever it points.
	// Its answers are read up to maxAuthorityBody: a token answer is a few KiB.
	tokenHTTP := NoRedirects(opts.HTTPClient)
	tokenHTTP.Transport = limitBodies{next: cmp.Or[http.RoundTripper](tokenHTTP.Transport, http.DefaultTransport), max: maxAuthorityBody}
	clientOpts := azcore.ClientOptions{
		Cloud:     cloud.Configuration{ActiveDirectoryAuthorityHost: authority},
		Transport: tokenHTTP,
	}
	tenant, client := env(EnvTenantID), env(EnvClientID)
	cr := &Credential{
		scope:   graphURL.String() + "/.default",
		log:     cmp.Or(opts.Logger, slog.New(slog.DiscardHandler)),
		now:     time.Now,
		onReady: opts.OnReady,
	}
	cr.life, cr.stop = context.WithCancel(context.Background())
	needIDs := func() error {
		if tenant == "" || client == "" {
			return fmt.Errorf("credential: %s needs %s and %s", cr.kind, EnvTenantID, EnvClientID)
		}
		return nil
	}
	switch login := cmp.Or(opts.Login, LoginAuto); {
	case login != LoginAuto:
		if err := developerLoginAllowed(env, login); err != nil {
			return nil, err
		}
		cr.kind = KindAzureCLI
		switch login {
		case LoginAzd:
			cr.kind = KindAzureDeveloperCLI
		case LoginDev:
			cr.kind = KindDeveloper
		}
		cr.newCred = func() (azcore.TokenCredential, error) { return developerCredential(login, tenant) }
	case env(EnvClientSecret) != "":
		cr.kind = KindClientSecret
		secret := env(EnvClientSecret)
		cr.secrets = []string{secret}
		cr.newCred = func() (azcore.TokenCredential, error) {
			return azidentity.NewClientSecretCredential(tenant, client, secret, &azidentity.ClientSecretCredentialOptions{
				ClientOptions: clientOpts, DisableInstanceDiscovery: customAuthority,
			})
		}
	case env(EnvCertificatePath) != "":
		cr.kind = KindClientCertificate
		path, password := env(EnvCertificatePath), env(EnvCertificatePassword)
		if password != "" {
			cr.secrets = []string{password}
		}
		cr.newCred = func() (azcore.TokenCredential, error) {
			data, err := os.ReadFile(path)
			if err != nil {
				return nil, fmt.Errorf("read %s: %w", EnvCertificatePath, err)
			}
			certs, key, err := azidentity.ParseCertificates(data, []byte(password))
			if err != nil {
				return nil, fmt.Errorf("parse certificate %s: %w", path, err)
			}
			return azidentity.NewClientCertificateCredential(tenant, client, certs, key, &azidentity.ClientCertificateCredentialOptions{
				ClientOptions: clientOpts, DisableInstanceDiscovery: customAuthority,
			})
		}
	case env(EnvFederatedTokenFile) != "":
		cr.kind = KindWorkloadIdentity
		file := env(EnvFederatedTokenFile)
		cr.newCred = func() (azcore.TokenCredential, error) {
			return azidentity.NewWorkloadIdentityCredential(&azidentity.WorkloadIdentityCredentialOptions{
				ClientOptions: clientOpts, ClientID: client, TenantID: tenant, TokenFilePath: file,
				DisableInstanceDiscovery: customAuthority,
			})
		}
	default:
		cr.kind = KindManagedIdentity
		miOpts := &azidentity.ManagedIdentityCredentialOptions{ClientOptions: clientOpts}
		if client != "" {
			miOpts.ID = azidentity.ClientID(client)
		}
		cr.newCred = func() (azcore.TokenCredential, error) { return azidentity.NewManagedIdentityCredential(miOpts) }
	}
	if cr.kind == KindClientSecret || cr.kind == KindClientCertificate || cr.kind == KindWorkloadIdentity {
		if err := needIDs(); err != nil {
			return nil, err
		}
	}
	if cr.cred, err = cr.newCred(); err != nil {
		return nil, fmt.Errorf("credential: %s: %s", cr.kind, cr.redact(err.Error()))
	}
	cr.backoff = backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(cmp.Or(opts.MinBackoff, time.Second)),
		backoff.WithMaxInterval(cmp.Or(opts.MaxBackoff, time.Minute)),
		backoff.WithMaxElapsedTime(0),
	)
	return cr, nil
}

// developerLoginAllowed refuses a developer login where it has no place: inside
// Kubernetes, a pod must use workload or managed identity, never whatever "az" finds.
func developerLoginAllowed(env func(string) string, login string) error {
	if !slices.Contains(Logins, login) {
		return fmt.Errorf("credential: REPROCESSOR_CREDENTIAL %q: valid values are %s", login, strings.Join(Logins, ", "))
	}
	if env("KUBERNETES_SERVICE_HOST") != "" {
		return fmt.Errorf("credential: REPROCESSOR_CREDENTIAL=%s is a developer's own login; inside Kubernetes (KUBERNETES_SERVICE_HOST is set) use workload identity (AZURE_FEDERATED_TOKEN_FILE) or managed identity", login)
	}
	return nil
}

// developerCredential is the Azure CLI's, azd's, or the one then the other. tenant, when
// set, is the tenant asked for (AZURE_TENANT_ID).
func developerCredential(login, tenant string) (azcore.TokenCredential, error) {
	var creds []azcore.TokenCredential
	if login == LoginAzureCLI || login == LoginDev {
		c, err := azidentity.NewAzureCLICredential(&azidentity.AzureCLICredentialOptions{TenantID: tenant})
		if err != nil {
			return nil, err
		}
		creds = append(creds, c)
	}
	if login == LoginAzd || login == LoginDev {
		c, err := azidentity.NewAzureDeveloperCLICredential(&azidentity.AzureDeveloperCLICredentialOptions{TenantID: tenant})
		if err != nil {
			return nil, err
		}
		creds = append(creds, c)
	}
	if len(creds) == 1 {
		return creds[0], nil
	}
	return azidentity.NewChainedTokenCredential(creds, nil)
}

// WouldUse says which credential NewCredential would build from env and login, and from
// which variables, without building it (for check-config).
func WouldUse(env func(string) string, login string) (string, error) {
	switch login = cmp.Or(login, LoginAuto); {
	case login != LoginAuto:
		if err := developerLoginAllowed(env, login); err != nil {
			return "", err
		}
		return map[string]string{LoginAzureCLI: KindAzureCLI, LoginAzd: KindAzureDeveloperCLI, LoginDev: KindDeveloper}[login] + " (REPROCESSOR_CREDENTIAL=" + login + ")", nil
	case env(EnvClientSecret) != "":
		return KindClientSecret + " (" + EnvClientSecret + ")", nil
	case env(EnvCertificatePath) != "":
		return KindClientCertificate + " (" + EnvCertificatePath + ")", nil
	case env(EnvFederatedTokenFile) != "":
		return KindWorkloadIdentity + " (" + EnvFederatedTokenFile + ")", nil
	}
	return KindManagedIdentity + " (no AZURE_CLIENT_SECRET, AZURE_CLIENT_CERTIFICATE_PATH or AZURE_FEDERATED_TOKEN_FILE)", nil
}

// Kind says which credential the variables chose: "client secret", "client certificate",
// "workload identity" or "managed identity".
func (c *Credential) Kind() string { return c.kind }

// Scope is the scope asked for: the Graph base URL with "/.default".
func (c *Credential) Scope() string { return c.scope }

// Token returns the current token, fetching one when there is none or it is about to
// expire. While the authority fails, it returns the last error (wrapping ErrToken) until the
// next attempt is due.
func (c *Credential) Token(ctx context.Context) (string, error) {
	c.mu.Lock()
	now := c.now()
	switch {
	case c.token != "" && now.Before(c.refreshAt):
		t := c.token
		c.mu.Unlock()
		return t, nil
	case c.lastErr != nil && now.Before(c.nextTry):
		t, err := c.token, c.lastErr
		valid := t != "" && now.Before(c.expires)
		c.mu.Unlock()
		if valid {
			return t, nil
		}
		return "", err
	}
	c.mu.Unlock()
	t, err := c.fetch(ctx, "token", false)
	if err != nil {
		// A renewal that failed leaves the current token usable until it expires.
		c.mu.Lock()
		if c.token != "" && c.now().Before(c.expires) {
			t, err = c.token, nil
		}
		c.mu.Unlock()
	}
	return t, err
}

// Refresh returns a token other than stale, from a new azidentity credential (whose cache
// cannot hold stale) unless another caller already replaced stale. Concurrent callers with
// the same stale token share one request to the authority.
func (c *Credential) Refresh(ctx context.Context, stale string) (string, error) {
	c.mu.Lock()
	now := c.now()
	switch {
	case c.token != "" && c.token != stale && now.Before(c.expires):
		t := c.token
		c.mu.Unlock()
		return t, nil
	case c.lastErr != nil && now.Before(c.nextTry):
		err := c.lastErr
		c.mu.Unlock()
		return "", err
	}
	c.mu.Unlock()
	return c.fetch(ctx, "refresh:"+stale, true)
}

// fetch asks the authority once for every caller with the same key; a caller whose ctx
// ends stops waiting without cancelling the request for the others.
func (c *Credential) fetch(ctx context.Context, key string, fresh bool) (string, error) {
	ch := c.flight.DoChan(key, func() (any, error) {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return "", fmt.Errorf("%w: the credential is closed", ErrToken)
		}
		c.requests.Add(1)
		c.mu.Unlock()
		defer c.requests.Done()
		fctx, cancel := context.WithTimeout(c.life, fetchTimeout)
		defer cancel()
		return c.obtain(fctx, fresh)
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return "", r.Err
		}
		return r.Val.(string), nil
	case <-ctx.Done():
		return "", fmt.Errorf("%w: waiting for token: %w", ErrToken, ctx.Err())
	}
}

// obtain requests a token, from a new credential when fresh, and records the outcome.
func (c *Credential) obtain(ctx context.Context, fresh bool) (string, error) {
	c.mu.Lock()
	cred, old := c.cred, c.token
	c.mu.Unlock()
	var err error
	if fresh {
		cred, err = c.newCred()
	}
	var at azcore.AccessToken
	if err == nil {
		at, err = cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{c.scope}})
	}
	if err == nil && !fresh && at.Token == old {
		// The credential's cache handed back the token being replaced: go around it.
		fresh = true
		if cred, err = c.newCred(); err == nil {
			at, err = cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{c.scope}})
		}
	}

	c.mu.Lock()
	now := c.now()
	if err == nil && at.ExpiresOn.Sub(now) < minTokenLifetime {
		err = fmt.Errorf("%w (it expires in %s, less than %s): not used", errShortLived, at.ExpiresOn.Sub(now).Round(time.Second), minTokenLifetime)
	}
	if err != nil {
		c.lastErr = c.wrap(err)
		wait := c.backoff.NextBackOff()
		c.nextTry = now.Add(wait)
		c.log.LogAttrs(ctx, slog.LevelWarn, "graph token request failed", slog.String("credential", c.kind),
			slog.String("reason", c.lastErr.(*TokenError).Reason), slog.Duration("next_attempt_in", wait))
		lastErr := c.lastErr
		c.mu.Unlock()
		return "", lastErr
	}
	becameReady := c.token == "" || !now.Before(c.expires)
	if c.lastErr != nil {
		c.log.LogAttrs(ctx, slog.LevelInfo, "graph token obtained after failures", slog.String("credential", c.kind))
	}
	if fresh {
		c.cred = cred
	}
	c.token, c.expires = at.Token, at.ExpiresOn
	c.refreshAt = at.ExpiresOn.Add(-min(maxRefreshMargin, at.ExpiresOn.Sub(now)/2))
	c.lastErr, c.nextTry = nil, time.Time{}
	c.backoff.Reset()
	c.mu.Unlock()
	if becameReady && c.onReady != nil {
		c.onReady() // outside the lock: it may call back into the credential
	}
	return at.Token, nil
}

// Run keeps a token fresh until ctx ends: it obtains one at once, replaces it before it
// expires and retries failures with exponential backoff.
func (c *Credential) Run(ctx context.Context) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		_, _ = c.Token(ctx)
		c.mu.Lock()
		next := c.refreshAt
		if c.lastErr != nil {
			next = c.nextTry
		}
		wait := max(next.Sub(c.now()), 10*time.Millisecond)
		c.mu.Unlock()
		timer.Reset(wait)
	}
}

// Close cancels the token requests under way and waits for them to end; the credential
// gives no token after it.
func (c *Credential) Close() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.stop()
	c.requests.Wait()
}

// Ready reports whether a token that has not expired is held.
func (c *Credential) Ready() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.token != "" && c.now().Before(c.expires)
}

// LastError returns the error of the last token request, nil if it succeeded.
func (c *Credential) LastError() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastErr
}

// TokenError is a failed token request. Its message holds the authority's reason (such as
// "invalid_client: AADSTS7000215: Invalid client secret provided.") and never a secret.
type TokenError struct {
	Kind   string // the credential kind
	Reason string // the authority's reason, or the failure's text, secrets removed
	Status int    // the authority's HTTP status, 0 if none
	cause  error
}

// Error implements error.
func (e *TokenError) Error() string {
	return ErrToken.Error() + ": " + e.Kind + ": " + e.Reason
}

// Is makes errors.Is(err, ErrToken) true.
func (e *TokenError) Is(target error) bool { return target == ErrToken }

// Unwrap returns the underlying error (whose own text may be long; it holds no secret
// sent by this process but is not redacted).
func (e *TokenError) Unwrap() error { return e.cause }

func (c *Credential) wrap(err error) *TokenError {
	e := &TokenError{Kind: c.kind, cause: err}
	var af *azidentity.AuthenticationFailedError
	if errors.As(err, &af) && af.RawResponse != nil {
		e.Status = af.RawResponse.StatusCode
		e.Reason = authorityReason(af.RawResponse)
	}
	if e.Reason == "" {
		e.Reason = firstLine(err.Error())
	}
	e.Reason = c.redact(e.Reason)
	return e
}

// authorityReason extracts "error: first line of error_description" from an OAuth error.
func authorityReason(resp *http.Response) string {
	body, err := runtime.Payload(resp)
	if err != nil {
		return ""
	}
	var b struct {
		Error       string `json:"error"`
		Description string `json:"error_description"`
	}
	if json.Unmarshal(body, &b) != nil || b.Error == "" && b.Description == "" {
		return fmt.Sprintf("HTTP %d: %s", resp.StatusCode, truncate(firstLine(string(body)), 200))
	}
	desc := firstLine(b.Description)
	if b.Error == "" {
		return desc
	}
	return b.Error + ": " + desc
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		s = strings.TrimSpace(s[:i])
	}
	return s
}

// redact removes the configured secrets from s.
func (c *Credential) redact(s string) string {
	for _, secret := range c.secrets {
		if secret != "" {
			s = strings.ReplaceAll(s, secret, "[redacted]")
		}
	}
	return s
}
