// xds-client plays the sidecar's Envoy towards pilot-agent's local xDS proxy, which is
// what carries a VM's node metadata to istiod: with DISABLE_ENVOY=true nothing else
// connects, and pilot-agent dials istiod's xDS only for a downstream client. It sends the
// node pilot-agent itself rendered (its gRPC xDS bootstrap, the node a proxyless gRPC
// application sends), asks for listeners, ACKs, prints one line per response and keeps
// the stream open until stdin closes.
//
//	xds-client BOOTSTRAP.json SOCKET
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"
)

const lds = "type.googleapis.com/envoy.config.listener.v3.Listener"

func fail(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "xds-client: "+format+"\n", a...)
	os.Exit(1)
}

func main() {
	if len(os.Args) != 3 {
		fail("usage: xds-client BOOTSTRAP.json SOCKET")
	}
	raw, err := os.ReadFile(os.Args[1])
	if err != nil {
		fail("%v", err)
	}
	var b struct {
		Node struct {
			ID       string         `json:"id"`
			Metadata map[string]any `json:"metadata"`
		} `json:"node"`
	}
	if err := json.Unmarshal(raw, &b); err != nil {
		fail("bootstrap %s: %v", os.Args[1], err)
	}
	md, err := structpb.NewStruct(b.Node.Metadata)
	if err != nil {
		fail("node metadata: %v", err)
	}
	node := &core.Node{Id: b.Node.ID, Metadata: md}
	conn, err := grpc.NewClient("unix://"+os.Args[2], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fail("dial %s: %v", os.Args[2], err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		fail("stream: %v", err)
	}
	if err := stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: lds}); err != nil {
		fail("send: %v", err)
	}
	go func() {
		for {
			resp, err := stream.Recv()
			if err != nil {
				fmt.Printf("closed: %v\n", err)
				os.Exit(2)
			}
			fmt.Printf("response type=%s version=%s resources=%d\n", resp.TypeUrl, resp.VersionInfo, len(resp.Resources))
			if err := stream.Send(&discovery.DiscoveryRequest{
				TypeUrl: resp.TypeUrl, VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce,
			}); err != nil {
				fmt.Printf("closed: %v\n", err)
				os.Exit(2)
			}
		}
	}()
	_, _ = io.Copy(io.Discard, os.Stdin)
}
