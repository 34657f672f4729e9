// Command watermill is the peer the bench measures reprocessor against: the same job (take
// an assignment id from a JetStream queue, POST reprocess to Graph, publish an event and
// await its storing, ack), written the way a Watermill user would write it, with
// watermill-nats v2 in JetStream mode, a durable queue group, a router with the Retry and
// Recoverer middleware, and a handler that returns the event for the router to publish.
//
// It lives in a module of its own so that Watermill stays out of reprocessor's go.mod. It
// is configured by the environment the bench gives it:
//
//	NATS_URL              the NATS server
//	PEER_PREFIX           subjects: <prefix>.requests in, <prefix>.events.accepted out
//	PEER_CONCURRENCY      messages worked at once (watermill-nats subscribers)
//	REPROCESSOR_GRAPH_URL the Graph base URL
//	AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET, AZURE_AUTHORITY_HOST, SSL_CERT_FILE
//
// It runs until SIGTERM or SIGINT.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/ThreeDotsLabs/watermill"
	wmnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "watermill peer:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	prefix := os.Getenv("PEER_PREFIX")
	concurrency, err := strconv.Atoi(os.Getenv("PEER_CONCURRENCY"))
	if err != nil || concurrency < 1 {
		return fmt.Errorf("PEER_CONCURRENCY %q: want a positive number", os.Getenv("PEER_CONCURRENCY"))
	}
	graphURL := strings.TrimRight(os.Getenv("REPROCESSOR_GRAPH_URL"), "/")
	cred, err := azidentity.NewClientSecretCredential(os.Getenv("AZURE_TENANT_ID"), os.Getenv("AZURE_CLIENT_ID"), os.Getenv("AZURE_CLIENT_SECRET"),
		&azidentity.ClientSecretCredentialOptions{
			ClientOptions:            azcore.ClientOptions{Cloud: cloudFor(os.Getenv("AZURE_AUTHORITY_HOST"))},
			DisableInstanceDiscovery: true,
		})
	if err != nil {
		return err
	}
	logger := watermill.NewStdLogger(false, false)
	natsOpts := []nats.Option{nats.Name("watermill-peer")}
	js := wmnats.JetStreamConfig{
		AutoProvision: false, // the streams are there: the bench made them
		AckAsync:      true,  // as the worker: the ack is not awaited (a lost one is a redelivery)
		DurablePrefix: "watermill-peer",
		SubscribeOptions: []nats.SubOpt{
			nats.DeliverAll(), nats.AckExplicit(), nats.MaxAckPending(4 * concurrency),
		},
		PublishOptions: []nats.PubOpt{nats.AckWait(10 * time.Second)},
	}
	sub, err := wmnats.NewSubscriber(wmnats.SubscriberConfig{
		URL:              os.Getenv("NATS_URL"),
		QueueGroupPrefix: "watermill-peer",
		SubscribersCount: concurrency,
		AckWaitTimeout:   30 * time.Second,
		CloseTimeout:     10 * time.Second,
		NatsOptions:      natsOpts,
		Unmarshaler:      &wmnats.NATSMarshaler{},
		JetStream:        js,
	}, logger)
	if err != nil {
		return err
	}
	pub, err := wmnats.NewPublisher(wmnats.PublisherConfig{
		URL:         os.Getenv("NATS_URL"),
		NatsOptions: natsOpts,
		Marshaler:   &wmnats.NATSMarshaler{},
		JetStream:   js,
	}, logger)
	if err != nil {
		return err
	}
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, logger)
	if err != nil {
		return err
	}
	router.AddMiddleware(
		middleware.Recoverer,
		middleware.Retry{MaxRetries: 5, InitialInterval: time.Second, MaxInterval: time.Minute, Multiplier: 2, RandomizationFactor: 0.5, Logger: logger}.Middleware,
	)
	client := &http.Client{Timeout: 30 * time.Second}
	router.AddHandler("reprocess", prefix+".requests", sub, prefix+".events.accepted", pub, func(msg *message.Message) ([]*message.Message, error) {
		id := strings.TrimSpace(string(msg.Payload))
		if _, err := uuid.Parse(id); err != nil {
			return nil, nil // not an id: nothing to do (acked)
		}
		tok, err := cred.GetToken(msg.Context(), policy.TokenRequestOptions{Scopes: []string{graphURL + "/.default"}})
		if err != nil {
			return nil, err
		}
		req, err := http.NewRequestWithContext(msg.Context(), http.MethodPost,
			graphURL+"/v1.0/identityGovernance/entitlementManagement/assignments/"+id+"/reprocess", nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", "Bearer "+tok.Token)
		req.Header.Set("client-request-id", uuid.NewString())
		resp, err := client.Do(req)
		if err != nil {
			return nil, err
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			return nil, fmt.Errorf("graph answered %d", resp.StatusCode)
		}
		eventID := uuid.NewString()
		data, err := json.Marshal(map[string]any{
			"specversion": "1.0", "id": eventID, "source": "watermill-peer", "type": "reprocess.accepted",
			"subject": id, "time": time.Now().UTC().Format(time.RFC3339Nano), "datacontenttype": "application/json",
			"data": map[string]any{"assignmentId": id, "status": resp.StatusCode},
		})
		if err != nil {
			return nil, err
		}
		ev := message.NewMessage(eventID, data)
		ev.Metadata.Set(nats.MsgIdHdr, eventID)
		return []*message.Message{ev}, nil
	})
	return router.Run(ctx)
}

// cloudFor is the public cloud with its authority moved to host (the simulated Entra).
func cloudFor(host string) cloud.Configuration {
	c := cloud.AzurePublic
	if host != "" {
		c.ActiveDirectoryAuthorityHost = host
	}
	return c
}
