// Package graphtest is a simulated Microsoft Graph for tests, the demo, the fake-graph
// command and benchmarks: a real HTTPS server (HTTP/2) serving a Microsoft Entra token
// endpoint and the entitlement management assignment API (reprocess, get, list) in v1.0 and
// beta, with latency, throttling and faults configurable while it serves, and a record of
// every call.
package graphtest

import (
	"cmp"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"golang.org/x/time/rate"
)

// Options configures a Server. The zero value is a fast, fault-free Graph.
type Options struct {
	// Addr is the address to listen on; default "127.0.0.1:0" (a free port).
	Addr string
	// TenantID, ClientID and ClientSecret are the accepted credentials; generated if empty.
	TenantID, ClientID, ClientSecret string
	// TokenLifetime is the expires_in of issued tokens; default 1h.
	TokenLifetime time.Duration
	// Now is the clock of the assignments' lifecycles (when a reprocess began, which state
	// it is in now); default time.Now. Tests pass their own to step through a lifecycle.
	Now func() time.Time
	// PageSize is the largest page a list answers; default 100.
	PageSize int
	// LatencyMin and LatencyMax delay each Graph answer by a random duration in that range
	// (LatencyMin alone: a fixed delay). Token requests are not delayed.
	LatencyMin, LatencyMax time.Duration
	// UnknownRate is the fraction of ids (chosen from a hash of the id, so always the same
	// ids) that do not exist and are answered 404.
	UnknownRate float64
	// ThrottleRate and UnavailableRate are the fractions of Graph calls answered 429 and 503
	// at random, with Retry-After RandomRetryAfter (default "1").
	ThrottleRate, UnavailableRate float64
	RandomRetryAfter              string
	// StrictStore makes only assignments added with AddAssignments exist; by default any
	// id is an existing delivered assignment.
	StrictStore bool
	// MaxRecordedCalls bounds the call record kept for Calls; default 100,000.
	MaxRecordedCalls int
	// Lifecycles, when set, give every id a lifecycle after a reprocess, chosen from the
	// id's hash (see SetLifecycleMix).
	Lifecycles []Lifecycle
}

// Realistic returns options for a demo: latency 50-300 ms, 2% unknown ids, an occasional
// 429 with Retry-After and an occasional 503.
func Realistic() Options {
	return Options{
		LatencyMin:       50 * time.Millisecond,
		LatencyMax:       300 * time.Millisecond,
		UnknownRate:      0.02,
		ThrottleRate:     0.01,
		UnavailableRate:  0.005,
		RandomRetryAfter: "1.5",
		Lifecycles: []Lifecycle{
			{Delivering: 2 * time.Second}, {Delivering: 3 * time.Second}, {Delivering: 4 * time.Second},
			{Delivering: 2 * time.Second}, {Delivering: 3 * time.Second}, {Delivering: 5 * time.Second},
			{Delivering: 3 * time.Second, Final: "partiallyDelivered"},
			{Delivering: 4 * time.Second, Final: "deliveryFailed"},
		},
	}
}

// Server is a running simulated Graph. Its configuration methods are safe to call while it
// serves.
type Server struct {
	// URL is the server's base URL (https://127.0.0.1:port), both the Graph base URL and the
	// authority host.
	URL string
	// TenantID, ClientID and ClientSecret are the credentials the token endpoint accepts.
	TenantID, ClientID, ClientSecret string

	ts       *httptest.Server
	now      func() time.Time // the lifecycles' clock
	certPEM  []byte
	client   *http.Client
	pageSize int
	lifetime time.Duration
	strict   bool
	maxCalls int

	tokens sync.Map // access token -> tokenInfo
	issued atomic.Int64

	latencyMin, latencyMax atomic.Int64
	inFlight, peakInFlight atomic.Int64 // Graph calls being answered, and the most at once
	unknownRate            atomicFloat
	throttleRate           atomicFloat
	unavailableRate        atomicFloat
	randomRetryAfter       atomic.Pointer[string]
	storm503               atomic.Int64
	throttle429            atomic.Int64
	throttleRetryAfter     atomic.Pointer[string]
	forbid                 atomic.Int64
	limiter                atomic.Pointer[rate.Limiter]
	expireEarly            atomic.Bool
	failTokens             atomic.Bool

	answersMu sync.RWMutex
	answers   map[string]int

	intercept atomic.Pointer[Interceptor]

	life lifecycles

	storeMu   sync.RWMutex
	store     map[string]*Assignment
	order     []string
	byPackage map[string][]string // access package id -> its assignments' ids, in order

	tenant tenant

	callsMu sync.Mutex
	calls   []Call
	counts  sync.Map // operation -> *atomic.Int64
}

// Interceptor answers a request instead of the simulated Graph and authority, for tests that
// play a hostile server (redirects, endless or stalled bodies, a token that expires at
// once, an answer about another assignment). It reports whether it answered; when it did
// not, the request is served as usual.
type Interceptor func(w http.ResponseWriter, r *http.Request) bool

// SetInterceptor sets (nil: removes) what answers requests before the simulated Graph.
func (s *Server) SetInterceptor(fn Interceptor) {
	if fn == nil {
		s.intercept.Store(nil)
		return
	}
	s.intercept.Store(&fn)
}

type tokenInfo struct {
	rejectAt time.Time
}

// New starts a Server and panics if it cannot listen (as httptest.NewServer does).
func New(opts Options) *Server {
	s, err := Start(opts)
	if err != nil {
		panic(fmt.Sprintf("graphtest: %v", err))
	}
	return s
}

// Start starts a Server.
func Start(opts Options) (*Server, error) {
	addr := cmp.Or(opts.Addr, "127.0.0.1:0")
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	host, _, _ := net.SplitHostPort(addr)
	cert, certPEM, err := selfSignedCert(host)
	if err != nil {
		_ = ln.Close()
		return nil, err
	}
	s := &Server{
		TenantID:     cmp.Or(opts.TenantID, newUUID()),
		ClientID:     cmp.Or(opts.ClientID, newUUID()),
		ClientSecret: cmp.Or(opts.ClientSecret, "gt~"+randomHex(20)),
		certPEM:      certPEM,
		now:          opts.Now,
		pageSize:     cmp.Or(max(opts.PageSize, 0), 100),
		lifetime:     cmp.Or(max(opts.TokenLifetime, 0), time.Hour),
		strict:       opts.StrictStore,
		maxCalls:     cmp.Or(max(opts.MaxRecordedCalls, 0), 100_000),
		answers:      map[string]int{},
		store:        map[string]*Assignment{},
		byPackage:    map[string][]string{},
	}
	if s.now == nil {
		s.now = time.Now
	}
	s.SetLatency(opts.LatencyMin, opts.LatencyMax)
	s.SetUnknownRate(opts.UnknownRate)
	s.SetRandomFaults(opts.ThrottleRate, opts.UnavailableRate, opts.RandomRetryAfter)
	if len(opts.Lifecycles) > 0 {
		s.SetLifecycleMix(opts.Lifecycles...)
	}

	s.ts = httptest.NewUnstartedServer(http.HandlerFunc(s.serveHTTP))
	_ = s.ts.Listener.Close()
	s.ts.Listener = ln
	s.ts.EnableHTTP2 = true
	s.ts.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	s.ts.Config.ErrorLog = log.New(io.Discard, "", 0) // TLS handshake noise from clients that go away
	s.ts.StartTLS()
	s.URL = s.ts.URL
	if tcp, ok := ln.Addr().(*net.TCPAddr); ok && tcp.IP.IsUnspecified() {
		s.URL = fmt.Sprintf("https://127.0.0.1:%d", tcp.Port) // listening on all addresses
	}

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(certPEM)
	s.client = &http.Client{Transport: &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2:   true,
		MaxIdleConns:        512,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     90 * time.Second,
	}}
	return s, nil
}

// Close shuts the server down, closing its connections.
func (s *Server) Close() {
	s.client.CloseIdleConnections()
	s.ts.CloseClientConnections()
	s.ts.Close()
}

// Client returns an HTTP client that trusts the server's certificate (HTTP/2 enabled).
// The server closes its idle connections on Close.
func (s *Server) Client() *http.Client { return s.client }

// CACertPEM returns the server's certificate, PEM-encoded: the CA to trust.
func (s *Server) CACertPEM() []byte { return append([]byte(nil), s.certPEM...) }

// WriteCAFile writes the server's certificate to dir/graphtest-ca.pem and returns the path.
func (s *Server) WriteCAFile(dir string) (string, error) {
	path := filepath.Join(dir, "graphtest-ca.pem")
	if err := os.WriteFile(path, s.certPEM, 0o644); err != nil {
		return "", fmt.Errorf("write CA file: %w", err)
	}
	return path, nil
}

// Env returns the environment that points a process at this server: the AZURE_* variables
// of its credentials and authority, SSL_CERT_FILE (caFile, from WriteCAFile) and
// REPROCESSOR_GRAPH_URL.
func (s *Server) Env(caFile string) map[string]string {
	return map[string]string{
		"AZURE_TENANT_ID":       s.TenantID,
		"AZURE_CLIENT_ID":       s.ClientID,
		"AZURE_CLIENT_SECRET":   s.ClientSecret,
		"AZURE_AUTHORITY_HOST":  s.URL + "/",
		"SSL_CERT_FILE":         caFile,
		"REPROCESSOR_GRAPH_URL": s.URL,
	}
}

// selfSignedCert makes a P-256 certificate for loopback, localhost and host, which is also
// its own CA.
func selfSignedCert(host string) (tls.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("generate key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("generate serial: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"reprocessor graphtest"}, CommonName: "graphtest"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() && !ip.IsLoopback() {
		tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
	} else if ip == nil && host != "" && host != "localhost" {
		tmpl.DNSNames = append(tmpl.DNSNames, host)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("create certificate: %w", err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, certPEM, nil
}

func newUUID() string { return uuid.NewString() }

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
