package graph_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/reprocessor/reprocessor/graph"
)

// fakeAz puts an "az" on PATH that answers "az account get-access-token" as the Azure CLI
// does, and records its arguments.
func fakeAz(t *testing.T, token string) string {
	t.Helper()
	dir := t.TempDir()
	expires := time.Now().Add(time.Hour)
	script := "#!/bin/sh\necho \"$@\" >> " + filepath.Join(dir, "args") + "\n" +
		`echo '{"accessToken":"` + token + `","expiresOn":"` + expires.Format("2006-01-02 15:04:05.000000") +
		`","expires_on":` + itoa(expires.Unix()) + `,"subscription":"s","tenant":"t","tokenType":"Bearer"}'` + "\n"
	if err := os.WriteFile(filepath.Join(dir, "az"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	return filepath.Join(dir, "args")
}

func itoa(n int64) string {
	var b []byte
	for n > 0 {
		b = append([]byte{byte('0' + n%10)}, b...)
		n /= 10
	}
	return string(b)
}

// A developer's "az login" gives the token, when asked for, and only outside Kubernetes.
func TestAzureCLICredential(t *testing.T) {
	args := fakeAz(t, "token-from-az")
	env := map[string]string{"AZURE_TENANT_ID": "00000000-0000-4000-8000-0000000000aa"}
	cred, err := graph.NewCredential(func(k string) string { return env[k] }, graph.Cloud{GraphURL: "https://graph.microsoft.com"},
		graph.CredentialOptions{Login: graph.LoginAzureCLI})
	if err != nil {
		t.Fatal(err)
	}
	defer cred.Close()
	if cred.Kind() != graph.KindAzureCLI {
		t.Errorf("kind %q", cred.Kind())
	}
	tok, err := cred.Token(context.Background())
	if err != nil || tok != "token-from-az" {
		t.Fatalf("token %q, %v", tok, err)
	}
	b, _ := os.ReadFile(args)
	if !strings.Contains(string(b), "get-access-token") || !strings.Contains(string(b), "https://graph.microsoft.com") || !strings.Contains(string(b), env["AZURE_TENANT_ID"]) {
		t.Errorf("az was called with %q: want get-access-token for Graph in the tenant", b)
	}
	if got, _ := graph.WouldUse(func(k string) string { return env[k] }, graph.LoginAzureCLI); !strings.HasPrefix(got, graph.KindAzureCLI) {
		t.Errorf("WouldUse = %q", got)
	}

	env["KUBERNETES_SERVICE_HOST"] = "10.0.0.1"
	if _, err := graph.NewCredential(func(k string) string { return env[k] }, graph.Cloud{}, graph.CredentialOptions{Login: graph.LoginDev}); err == nil || !strings.Contains(err.Error(), "Kubernetes") {
		t.Errorf("a developer login inside Kubernetes: err %v, want it refused", err)
	}
	// The AZURE_* variables never choose a developer login by themselves.
	env = map[string]string{}
	if got, _ := graph.WouldUse(func(k string) string { return env[k] }, ""); !strings.HasPrefix(got, graph.KindManagedIdentity) {
		t.Errorf("nothing set: WouldUse = %q, want managed identity", got)
	}
}
