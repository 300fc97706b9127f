// Command kube-harness runs a real, single-node Kubernetes control plane for tests:
// an embedded etcd and the real kube-apiserver (exec'd from --bin-dir), both on
// 127.0.0.1 at free ports, with client-certificate authentication, RBAC and
// ServiceAccount token signing (so TokenRequest and TokenReview work).
//
// Once /readyz answers it prints ONE line of JSON on stdout (the "ready line"):
//
//	{"ready":true,"kubeconfig":"DIR/kubeconfig","server":"https://127.0.0.1:PORT",...}
//
// It stops (apiserver first, then etcd) on SIGTERM/SIGINT or when its stdin reaches
// EOF, so a test that spawns it with a piped stdin takes it down by exiting, even on
// a panic. Everything it writes lives under --data-dir, which it never deletes: the
// caller owns that directory.
//
// There is no kube-controller-manager: no garbage collector, no namespace
// finalisation, no ServiceAccount or token controllers. Tests create what they need.
package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// The audience the API server accepts for its own tokens and the issuer it stamps.
// They match what a kubeadm cluster uses, so in-cluster clients behave the same.
const (
	saIssuer = "https://kubernetes.default.svc.cluster.local"
)

type readyLine struct {
	Ready      bool   `json:"ready"`
	Kubeconfig string `json:"kubeconfig"`
	Server     string `json:"server"`
	Etcd       string `json:"etcd"`
	DataDir    string `json:"dataDir"`
	CAFile     string `json:"caFile"`
	Issuer     string `json:"serviceAccountIssuer"`
	SAPubKey   string `json:"serviceAccountPublicKeyFile"`
	APIServer  int    `json:"apiserverPid"`
	Harness    int    `json:"harnessPid"`
}

func main() {
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	log.SetPrefix("kube-harness: ")
	// stdout carries only the ready line; every diagnostic goes to stderr.
	log.SetOutput(os.Stderr)

	self, _ := os.Executable()
	dataDir := flag.String("data-dir", "", "directory for etcd data, certificates, logs and the kubeconfig (required; created if missing, never deleted)")
	binDir := flag.String("bin-dir", filepath.Dir(self), "directory holding the kube-apiserver binary")
	watchStdin := flag.Bool("watch-stdin", true, "stop when stdin reaches EOF (set false when running by hand with stdin closed)")
	timeout := flag.Duration("ready-timeout", 3*time.Minute, "how long to wait for /readyz")
	verbosity := flag.Int("v", 1, "kube-apiserver log verbosity (its log is DATA_DIR/kube-apiserver.log)")
	var extra multiFlag
	flag.Var(&extra, "apiserver-arg", "extra kube-apiserver flag, e.g. --apiserver-arg=--feature-gates=X=true (repeatable)")
	flag.Parse()
	if *dataDir == "" {
		log.Fatal("--data-dir is required")
	}
	dir, err := filepath.Abs(*dataDir)
	if err != nil {
		log.Fatalf("data dir: %v", err)
	}
	apiserverBin := filepath.Join(*binDir, "kube-apiserver")
	if _, err := os.Stat(apiserverBin); err != nil {
		log.Fatalf("kube-apiserver not found at %s (build it with tests/kube-harness/build.sh): %v", apiserverBin, err)
	}

	stop := make(chan string, 4)
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	go func() { s := <-sigs; stop <- "signal " + s.String() }()
	if *watchStdin {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			stop <- "stdin closed"
		}()
	}

	if err := run(dir, apiserverBin, *timeout, *verbosity, extra, stop); err != nil {
		log.Printf("error: %v", err)
		os.Exit(1)
	}
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, " ") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func run(dir, apiserverBin string, timeout time.Duration, verbosity int, extra []string, stop <-chan string) error {
	pki := filepath.Join(dir, "pki")
	if err := os.MkdirAll(pki, 0o700); err != nil {
		return err
	}
	certs, err := writePKI(pki)
	if err != nil {
		return fmt.Errorf("certificates: %w", err)
	}

	etcd, etcdURL, err := startEtcd(filepath.Join(dir, "etcd"), filepath.Join(dir, "etcd.log"))
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	defer func() {
		etcd.Close()
		log.Printf("etcd stopped")
	}()
	log.Printf("etcd ready at %s", etcdURL)

	// A free port can be taken between our probe and the apiserver's bind; retry then.
	var cmd *exec.Cmd
	var server string
	var exited chan error
	for attempt := 1; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return err
		}
		server = "https://127.0.0.1:" + strconv.Itoa(port)
		cmd, exited, err = startAPIServer(apiserverBin, dir, certs, etcdURL, port, verbosity, extra)
		if err != nil {
			return err
		}
		err = waitReady(server, certs, timeout, exited, stop)
		if err == nil {
			break
		}
		stopProcess(cmd, exited)
		var portErr *bindError
		if errors.As(err, &portErr) && attempt < 3 {
			log.Printf("kube-apiserver exited early (port %d taken?), retrying", port)
			continue
		}
		return err
	}
	defer stopProcess(cmd, exited)

	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := writeKubeconfig(kubeconfig, server, certs); err != nil {
		return err
	}
	line, _ := json.Marshal(readyLine{
		Ready: true, Kubeconfig: kubeconfig, Server: server, Etcd: etcdURL, DataDir: dir,
		CAFile: certs.caFile, Issuer: saIssuer, SAPubKey: certs.saPub,
		APIServer: cmd.Process.Pid, Harness: os.Getpid(),
	})
	fmt.Println(string(line))
	log.Printf("ready: %s", server)

	select {
	case why := <-stop:
		log.Printf("stopping: %s", why)
		return nil
	case err := <-exited:
		// Put the value back so the deferred stopProcess does not wait for it.
		exited <- err
		return fmt.Errorf("kube-apiserver exited unexpectedly: %v (see %s)", err, filepath.Join(dir, "kube-apiserver.log"))
	}
}

// ---------------------------------------------------------------- etcd

func startEtcd(dataDir, logFile string) (*embed.Etcd, string, error) {
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		cport, err := freePort()
		if err != nil {
			return nil, "", err
		}
		pport, err := freePort()
		if err != nil {
			return nil, "", err
		}
		curl, _ := url.Parse("http://127.0.0.1:" + strconv.Itoa(cport))
		purl, _ := url.Parse("http://127.0.0.1:" + strconv.Itoa(pport))
		cfg := embed.NewConfig()
		cfg.Name = "harness"
		cfg.Dir = dataDir
		cfg.ListenClientUrls = []url.URL{*curl}
		cfg.AdvertiseClientUrls = []url.URL{*curl}
		cfg.ListenPeerUrls = []url.URL{*purl}
		cfg.AdvertisePeerUrls = []url.URL{*purl}
		cfg.InitialCluster = cfg.Name + "=" + purl.String()
		cfg.LogOutputs = []string{logFile}
		cfg.LogLevel = "warn"
		// Test data: durability across a power cut does not matter, speed does.
		cfg.UnsafeNoFsync = true
		// No metrics listener: one fewer port to collide on.
		cfg.ListenMetricsUrls = nil
		e, err := embed.StartEtcd(cfg)
		if err != nil {
			lastErr = err
			continue
		}
		select {
		case <-e.Server.ReadyNotify():
			return e, curl.String(), nil
		case err := <-e.Err():
			e.Close()
			lastErr = err
		case <-time.After(60 * time.Second):
			e.Close()
			return nil, "", errors.New("etcd not ready after 60s")
		}
	}
	return nil, "", lastErr
}

// ---------------------------------------------------------------- kube-apiserver

type bindError struct{ err error }

func (b *bindError) Error() string { return b.err.Error() }

func startAPIServer(bin, dir string, c *pkiFiles, etcdURL string, port, verbosity int, extra []string) (*exec.Cmd, chan error, error) {
	args := []string{
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		// The default endpoint reconciler refuses a loopback advertise address ("may not
		// be in the loopback range"); nothing here needs the kubernetes Service endpoints.
		"--endpoint-reconciler-type=none",
		"--secure-port=" + strconv.Itoa(port),
		"--etcd-servers=" + etcdURL,
		"--cert-dir=" + filepath.Join(dir, "apiserver-certs"),
		"--tls-cert-file=" + c.servingCert,
		"--tls-private-key-file=" + c.servingKey,
		"--client-ca-file=" + c.caFile,
		"--authorization-mode=RBAC",
		"--service-account-issuer=" + saIssuer,
		"--service-account-key-file=" + c.saPub,
		"--service-account-signing-key-file=" + c.saKey,
		"--service-cluster-ip-range=10.96.0.0/16",
		"--allow-privileged=true",
		"--anonymous-auth=false",
		"--profiling=false",
		"--v=" + strconv.Itoa(verbosity),
	}
	args = append(args, extra...)
	logf, err := os.OpenFile(filepath.Join(dir, "kube-apiserver.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	// If the harness itself is killed with SIGKILL the apiserver must not outlive it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, nil, fmt.Errorf("start %s: %w", bin, err)
	}
	log.Printf("kube-apiserver pid %d on port %d", cmd.Process.Pid, port)
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait(); logf.Close() }()
	return cmd, exited, nil
}

func waitReady(server string, c *pkiFiles, timeout time.Duration, exited chan error, stop <-chan string) error {
	client, err := c.adminClient()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			exited <- err
			return &bindError{fmt.Errorf("kube-apiserver exited before it was ready: %v", err)}
		case why := <-stop:
			return fmt.Errorf("stopped while waiting for readiness: %s", why)
		case <-time.After(250 * time.Millisecond):
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, server+"/readyz", nil)
		resp, err := client.Do(req)
		if err != nil {
			cancel()
			last = err.Error()
			continue
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		cancel()
		if resp.StatusCode == http.StatusOK {
			return nil
		}
		last = fmt.Sprintf("%d %s", resp.StatusCode, firstFailing(string(body)))
	}
	return fmt.Errorf("kube-apiserver not ready after %s: %s", timeout, last)
}

func firstFailing(body string) string {
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		if strings.Contains(sc.Text(), "[-]") {
			return sc.Text()
		}
	}
	return strings.TrimSpace(body)
}

func stopProcess(cmd *exec.Cmd, exited chan error) {
	select {
	case err := <-exited:
		exited <- err
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		exited <- err
		log.Printf("kube-apiserver stopped")
	case <-time.After(15 * time.Second):
		_ = cmd.Process.Kill()
		err := <-exited
		exited <- err
		log.Printf("kube-apiserver killed after 15s")
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// ---------------------------------------------------------------- PKI

type pkiFiles struct {
	caFile, caKey                    string
	servingCert, servingKey          string
	adminCert, adminKey              string
	saKey, saPub                     string
	caPEM, adminCertPEM, adminKeyPEM []byte
}

func (p *pkiFiles) adminClient() (*http.Client, error) {
	pair, err := tls.X509KeyPair(p.adminCertPEM, p.adminKeyPEM)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(p.caPEM)
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: pool, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12,
	}}}, nil
}

// writePKI makes a fresh CA, the apiserver's serving certificate, an admin client
// certificate (group system:masters) and the ServiceAccount signing key. A fresh set per
// run: the data directory is per test, so nothing is reused across runs.
func writePKI(dir string) (*pkiFiles, error) {
	p := &pkiFiles{
		caFile: filepath.Join(dir, "ca.crt"), caKey: filepath.Join(dir, "ca.key"),
		servingCert: filepath.Join(dir, "apiserver.crt"), servingKey: filepath.Join(dir, "apiserver.key"),
		adminCert: filepath.Join(dir, "admin.crt"), adminKey: filepath.Join(dir, "admin.key"),
		saKey: filepath.Join(dir, "sa.key"), saPub: filepath.Join(dir, "sa.pub"),
	}
	now := time.Now().Add(-time.Hour)
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: "kube-harness-ca"},
		NotBefore: now, NotAfter: now.Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, _ := x509.ParseCertificate(caDER)
	p.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	if err := os.WriteFile(p.caFile, p.caPEM, 0o644); err != nil {
		return nil, err
	}
	if err := writeECKey(p.caKey, caKey); err != nil {
		return nil, err
	}

	leaf := func(certFile, keyFile string, tmpl *x509.Certificate) ([]byte, []byte, error) {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, nil, err
		}
		tmpl.SerialNumber = serial()
		tmpl.NotBefore = now
		tmpl.NotAfter = now.Add(365 * 24 * time.Hour)
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			return nil, nil, err
		}
		certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
		if err := os.WriteFile(certFile, certPEM, 0o644); err != nil {
			return nil, nil, err
		}
		if err := writeECKey(keyFile, k); err != nil {
			return nil, nil, err
		}
		keyPEM, _ := os.ReadFile(keyFile)
		return certPEM, keyPEM, nil
	}
	if _, _, err := leaf(p.servingCert, p.servingKey, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc.cluster.local"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.96.0.1")},
	}); err != nil {
		return nil, err
	}
	p.adminCertPEM, p.adminKeyPEM, err = leaf(p.adminCert, p.adminKey, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-harness-admin", Organization: []string{"system:masters"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, err
	}

	// RSA for the ServiceAccount tokens (RS256), the algorithm every cluster uses by default.
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(p.saKey, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(saKey)}), 0o600); err != nil {
		return nil, err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(p.saPub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644); err != nil {
		return nil, err
	}
	return p, nil
}

func writeECKey(path string, k *ecdsa.PrivateKey) error {
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return err
	}
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600)
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	return n
}

func writeKubeconfig(path, server string, p *pkiFiles) error {
	b64 := base64.StdEncoding.EncodeToString
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: harness
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: admin
  user:
    client-certificate-data: %s
    client-key-data: %s
contexts:
- name: harness
  context:
    cluster: harness
    user: admin
current-context: harness
`, server, b64(p.caPEM), b64(p.adminCertPEM), b64(p.adminKeyPEM))
	return os.WriteFile(path, []byte(cfg), 0o600)
}
