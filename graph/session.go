package graph

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"time"
)

// SessionConfig is what Open needs besides the AZURE_* variables: where Graph is and how
// its calls are observed.
type SessionConfig struct {
	Cloud      string        // a name CloudByName knows
	GraphURL   string        // default the cloud's
	APIVersion string        // v1.0 or beta
	Timeout    time.Duration // of one call
	HTTPClient *http.Client  // carries Graph and token calls; default one of its own
	Observe    func(operation, code string, d time.Duration)
	Logger     *slog.Logger
	OnReady    func() // called when a token is obtained while none was held; may be nil
	Login      string // REPROCESSOR_CREDENTIAL: a developer login (Logins), or "" / auto
}

// Session is a Graph client and the credential that gives it tokens, which it keeps fresh
// in the background until Close. Every command that calls Graph starts one with Open.
type Session struct {
	Credential *Credential
	Client     *Client
	clientCfg  Config
	stop       context.CancelFunc
	done       chan struct{}
}

// Open builds the credential from getenv's AZURE_* variables and the client of cfg, and
// starts obtaining tokens.
func Open(getenv func(string) string, cfg SessionConfig) (*Session, error) {
	cloud, err := CloudByName(cfg.Cloud)
	if err != nil {
		return nil, fmt.Errorf("REPROCESSOR_CLOUD: %w", err)
	}
	cred, err := NewCredential(getenv, cloud, CredentialOptions{GraphURL: cfg.GraphURL, HTTPClient: cfg.HTTPClient, Logger: cfg.Logger, OnReady: cfg.OnReady, Login: cfg.Login})
	if err != nil {
		return nil, fmt.Errorf("graph credential: %w", err)
	}
	cc := Config{
		BaseURL:    cmp.Or(cfg.GraphURL, cloud.GraphURL),
		APIVersion: cfg.APIVersion,
		Timeout:    cfg.Timeout,
		HTTPClient: cfg.HTTPClient,
		Tokens:     cred,
		Observe:    cfg.Observe,
		Logger:     cfg.Logger,
	}
	client, err := New(cc)
	if err != nil {
		cred.Close()
		return nil, fmt.Errorf("graph client: %w", err)
	}
	ctx, stop := context.WithCancel(context.Background())
	s := &Session{Credential: cred, Client: client, clientCfg: cc, stop: stop, done: make(chan struct{})}
	go func() { defer close(s.done); cred.Run(ctx) }()
	return s, nil
}

// V1 returns a client of the session's Graph and credential that calls v1.0 whatever
// the configured API version: the drift reads and resource verification exist in v1.0.
func (s *Session) V1() *Client {
	if !s.Client.beta {
		return s.Client
	}
	cc := s.clientCfg
	cc.APIVersion = V1
	c, err := New(cc)
	if err != nil {
		return s.Client // New accepted the same configuration with beta
	}
	return c
}

// Close stops refreshing tokens and releases the credential.
func (s *Session) Close() {
	s.stop()
	<-s.done
	s.Credential.Close()
}
