package queue

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/reprocessor/reprocessor/internal/testsync"
)

// startAuthServer starts a plain nats-server (no JetStream) with opts adjusted by tune.
func startAuthServer(t *testing.T, tune func(*server.Options)) *server.Server {
	t.Helper()
	opts := &server.Options{Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true}
	tune(opts)
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("server: %v", err)
	}
	srv.Start()
	t.Cleanup(func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	})
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	return srv
}

// connectOK connects with cc and checks that a round trip works.
func connectOK(t *testing.T, cc ConnConfig) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	nc, err := Connect(ctx, cc, testLogger(t))
	if err != nil {
		t.Fatalf("connect (%s): %v", cc.Redacted(), err)
	}
	defer nc.Close()
	if err := nc.FlushWithContext(ctx); err != nil {
		t.Fatalf("flush: %v", err)
	}
}

// connectFails connects with cc, expecting a failure whose text and logs hold no secret.
func connectFails(t *testing.T, cc ConnConfig, secrets ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	logs := &lockedBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	nc, err := Connect(ctx, cc, logger)
	if err == nil {
		nc.Close()
		t.Fatalf("connect (%s) succeeded", cc.Redacted())
	}
	for _, s := range secrets {
		if strings.Contains(err.Error(), s) {
			t.Errorf("error %q holds a secret", err)
		}
	}
	text := logs.String()
	for _, s := range secrets {
		if strings.Contains(text, s) {
			t.Errorf("logs hold a secret: %s", text)
		}
	}
}

func TestConnectUserPassword(t *testing.T) {
	t.Parallel()
	srv := startAuthServer(t, func(o *server.Options) { o.Username, o.Password = "alice", "s3cret-pw" })
	connectOK(t, ConnConfig{URL: srv.ClientURL(), User: "alice", Password: "s3cret-pw"})
	connectFails(t, ConnConfig{URL: srv.ClientURL(), User: "alice", Password: "wrong-pw"}, "wrong-pw")
	// Credentials in the URL work, and are never shown.
	u := strings.Replace(srv.ClientURL(), "nats://", "nats://alice:s3cret-pw@", 1)
	connectOK(t, ConnConfig{URL: u})
	bad := strings.Replace(srv.ClientURL(), "nats://", "nats://alice:url-wrong-pw@", 1)
	connectFails(t, ConnConfig{URL: bad}, "url-wrong-pw")
}

func TestConnectToken(t *testing.T) {
	t.Parallel()
	srv := startAuthServer(t, func(o *server.Options) { o.Authorization = "tok-12345" })
	connectOK(t, ConnConfig{URL: srv.ClientURL(), Token: "tok-12345"})
	connectFails(t, ConnConfig{URL: srv.ClientURL(), Token: "tok-wrong"}, "tok-wrong")
}

func TestConnectNKey(t *testing.T) {
	t.Parallel()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	seed, err := kp.Seed()
	if err != nil {
		t.Fatal(err)
	}
	seedFile := filepath.Join(t.TempDir(), "user.nk")
	if err := os.WriteFile(seedFile, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	srv := startAuthServer(t, func(o *server.Options) { o.Nkeys = []*server.NkeyUser{{Nkey: pub}} })
	connectOK(t, ConnConfig{URL: srv.ClientURL(), NKey: seedFile})

	other, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	otherSeed, _ := other.Seed()
	otherFile := filepath.Join(t.TempDir(), "other.nk")
	if err := os.WriteFile(otherFile, otherSeed, 0o600); err != nil {
		t.Fatal(err)
	}
	connectFails(t, ConnConfig{URL: srv.ClientURL(), NKey: otherFile}, string(otherSeed))

	if _, err := Connect(t.Context(), ConnConfig{URL: srv.ClientURL(), NKey: filepath.Join(t.TempDir(), "missing")}, testLogger(t)); err == nil {
		t.Error("connect with a missing seed file: no error")
	}
}

func TestConnectTLS(t *testing.T) {
	t.Parallel()
	pki := newTestPKI(t)
	srv := startAuthServer(t, func(o *server.Options) {
		o.TLSConfig = &tls.Config{
			Certificates: []tls.Certificate{pki.server},
			ClientCAs:    pki.pool,
			ClientAuth:   tls.RequireAndVerifyClientCert,
			MinVersion:   tls.VersionTLS12,
		}
		o.TLS = true
		o.TLSVerify = true
		o.TLSTimeout = 5
	})
	url := strings.Replace(srv.ClientURL(), "nats://", "tls://", 1)
	connectOK(t, ConnConfig{URL: url, CA: pki.caFile, Cert: pki.clientCertFile, Key: pki.clientKeyFile})
	// Without a client certificate the server refuses.
	connectFails(t, ConnConfig{URL: url, CA: pki.caFile})
}

func TestConnConfigFromEnvAndRedacted(t *testing.T) {
	t.Parallel()
	env := map[string]string{
		"NATS_URL":      "nats://bob:pa55word@nats.example:4222,tls://other:4443",
		"NATS_USER":     "bob",
		"NATS_PASSWORD": "pa55word",
		"NATS_CA":       "/ca.pem",
		"NATS_CERT":     "/c.pem",
		"NATS_KEY":      "/k.pem",
	}
	cc := ConnConfigFromEnv(func(k string) string { return env[k] })
	if cc.User != "bob" || cc.Password != "pa55word" || cc.CA != "/ca.pem" || cc.Key != "/k.pem" {
		t.Errorf("from env: %+v", cc)
	}
	got := cc.Redacted()
	want := "url=nats://bob:[REDACTED]@nats.example:4222,tls://other:4443 auth=user/password tls=ca,client-cert"
	if got != want {
		t.Errorf("Redacted() = %q, want %q", got, want)
	}

	tests := []struct {
		cc   ConnConfig
		want string
	}{
		{ConnConfig{}, "url=nats://127.0.0.1:4222 auth=none"},
		{ConnConfig{URL: "nats://u:p@h:1"}, "url=nats://u:[REDACTED]@h:1 auth=url credentials"},
		{ConnConfig{URL: "alice:SECRETPW@127.0.0.1:4222"}, "url=alice:[REDACTED]@127.0.0.1:4222 auth=url credentials"},
		{ConnConfig{URL: "h:1", Token: "t0ken"}, "url=h:1 auth=token"},
		{ConnConfig{Creds: "/x.creds"}, "url=nats://127.0.0.1:4222 auth=creds"},
		{ConnConfig{NKey: "/x.nk", CA: "/ca"}, "url=nats://127.0.0.1:4222 auth=nkey tls=ca"},
	}
	for _, tt := range tests {
		if got := tt.cc.Redacted(); got != tt.want {
			t.Errorf("Redacted(%+v) = %q, want %q", tt.cc, got, tt.want)
		}
	}
}

func TestConnConfigValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		cc   ConnConfig
		want string
	}{
		{ConnConfig{User: "u", Token: "t"}, "NATS_USER, NATS_TOKEN"},
		{ConnConfig{Creds: "c", NKey: "n"}, "NATS_CREDS, NATS_NKEY"},
		{ConnConfig{Password: "p"}, "NATS_PASSWORD"},
		{ConnConfig{Cert: "c"}, "NATS_KEY"},
	}
	for _, tt := range tests {
		_, err := Connect(t.Context(), tt.cc, testLogger(t))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Connect(%s): %v, want an error naming %s", tt.cc.Redacted(), err, tt.want)
		}
	}
}

func TestRedaction(t *testing.T) {
	t.Parallel()
	r := redactor{cc: ConnConfig{URL: "nats://al:pw@h:4222", Password: "hunter22", Token: "tok-abc"}}
	for _, in := range []string{
		"dial nats://al:pw@h:4222: refused",
		"auth failed for hunter22",
		"bad token tok-abc",
		"tls://someone:else@host:1 failed",
		"user:pass@host:4222 refused",
	} {
		got := r.string(errString(in))
		for _, secret := range []string{"al:pw", "hunter22", "tok-abc", "someone:else", "user:pass"} {
			if strings.Contains(got, secret) {
				t.Errorf("redacted %q = %q: holds %q", in, got, secret)
			}
		}
	}
}

func TestReconnectDelay(t *testing.T) {
	t.Parallel()
	for attempts := range 20 {
		d := reconnectDelay(attempts)
		if d <= 0 || d > reconnectMax {
			t.Errorf("reconnectDelay(%d) = %s", attempts, d)
		}
	}
	if d := reconnectDelay(0); d > reconnectBase {
		t.Errorf("first delay %s exceeds %s", d, reconnectBase)
	}
	if d := reconnectDelay(100); d < reconnectMax/2 {
		t.Errorf("late delay %s below %s", d, reconnectMax/2)
	}
}

func TestConnectWaitsForLateServer(t *testing.T) {
	t.Parallel()
	// Reserve a port, release it, and start a server on it only after Connect began.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()

	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	result := make(chan error, 1)
	go func() {
		nc, err := Connect(ctx, ConnConfig{URL: "nats://127.0.0.1:" + itoa(uint64(port))}, testLogger(t))
		if err == nil {
			nc.Close()
		}
		result <- err
	}()
	srv, err := StartEmbedded(EmbeddedConfig{Port: port, DataDir: t.TempDir()})
	if err != nil {
		t.Fatalf("start server late: %v", err)
	}
	defer srv.Shutdown()
	if err := <-result; err != nil {
		t.Fatalf("connect before the server started: %v", err)
	}
}

// lockedBuffer is a bytes.Buffer safe for concurrent use.
type lockedBuffer = testsync.SyncBuffer

type errString string

func (e errString) Error() string { return string(e) }

// testPKI is a CA, a server certificate for 127.0.0.1 and a client certificate.
type testPKI struct {
	pool                                  *x509.CertPool
	server                                tls.Certificate
	caFile, clientCertFile, clientKeyFile string
}

func newTestPKI(t *testing.T) testPKI {
	t.Helper()
	dir := t.TempDir()
	caKey := newKey(t)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test ca"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(serial int64, cn string, usage x509.ExtKeyUsage) ([]byte, *ecdsa.PrivateKey) {
		key := newKey(t)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: cn},
			NotBefore:    time.Now().Add(-time.Hour),
			NotAfter:     time.Now().Add(time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
			IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
			DNSNames:     []string{"localhost"},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return der, key
	}
	serverDER, serverKey := issue(2, "server", x509.ExtKeyUsageServerAuth)
	clientDER, clientKey := issue(3, "client", x509.ExtKeyUsageClientAuth)

	pki := testPKI{
		pool:           x509.NewCertPool(),
		server:         tls.Certificate{Certificate: [][]byte{serverDER}, PrivateKey: serverKey},
		caFile:         filepath.Join(dir, "ca.pem"),
		clientCertFile: filepath.Join(dir, "client.pem"),
		clientKeyFile:  filepath.Join(dir, "client-key.pem"),
	}
	pki.pool.AddCert(caCert)
	writePEM(t, pki.caFile, "CERTIFICATE", caDER)
	writePEM(t, pki.clientCertFile, "CERTIFICATE", clientDER)
	keyDER, err := x509.MarshalECPrivateKey(clientKey)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, pki.clientKeyFile, "EC PRIVATE KEY", keyDER)
	return pki
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestRedactURLs: every form of user info nats.go accepts is redacted: with and without a
// scheme, a token alone, a password holding a comma or an '@', several URLs.
func TestRedactURLs(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"":                                    "",
		"nats://a:4222":                       "nats://a:4222",
		"host:4222":                           "host:4222",
		"nats://u:p@a:4222":                   "nats://u:[REDACTED]@a:4222",
		"alice:SECRETPW@127.0.0.1:4222":       "alice:[REDACTED]@127.0.0.1:4222",
		"nats://tok@a:4222,nats://b":          "nats://[REDACTED]@a:4222,nats://b",
		"s3cr3ttoken@a:4222":                  "[REDACTED]@a:4222",
		"nats://alice:pa,ss@127.0.0.1:4222":   "nats://alice:[REDACTED]@127.0.0.1:4222",
		"nats://alice:p@ss@127.0.0.1:4222":    "nats://alice:[REDACTED]@127.0.0.1:4222",
		"nats://u:p@a, tls://v:q@b:4443":      "nats://u:[REDACTED]@a, tls://v:[REDACTED]@b:4443",
		"nats://a@h1,bob:pw@h2":               "nats://[REDACTED]@h1,bob:[REDACTED]@h2",
		"https://u:@a":                        "https://u:@a",
		"nats://h1:4222,nats://u:secret@h2:1": "nats://h1:4222,nats://u:[REDACTED]@h2:1",
	} {
		got := RedactURLs(in)
		if got != want {
			t.Errorf("RedactURLs(%q) = %q, want %q", in, got, want)
		}
		for _, s := range URLSecrets(in) {
			if strings.Contains(got, s) {
				t.Errorf("RedactURLs(%q) = %q holds the secret %q", in, got, s)
			}
		}
	}
	if s := URLSecrets("nats://alice:pa,ss1@h"); !slices.Contains(s, "pa,ss1") || !slices.Contains(s, "ss1") {
		t.Errorf("URLSecrets of a password with a comma = %q", s)
	}
}
