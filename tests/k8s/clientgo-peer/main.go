// A client-go leader elector (tools/leaderelection on a coordination.k8s.io/v1 Lease), as
// the Go reference gateway runs it: the interop peer of tests/interop.rs. Built offline from
// the vendored client-go of the kube-apiserver source tree (tests/k8s/clientgo.sh).
//
// Prints one line per transition on stdout, flushed at once:
//   <unix seconds with ns> started-leading <identity>
//   <unix seconds with ns> stopped-leading <identity>
//   <unix seconds with ns> new-leader <identity of the leader>
// Stops (releasing the Lease, ReleaseOnCancel) on SIGTERM; SIGKILL is the crash case.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

func say(what, who string) {
	now := time.Now()
	fmt.Fprintf(os.Stdout, "%d.%09d %s %s\n", now.Unix(), now.Nanosecond(), what, who)
}

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig")
	namespace := flag.String("namespace", "hybrid-gateway", "Lease namespace")
	name := flag.String("name", "hybrid-gateway-leader", "Lease name")
	identity := flag.String("identity", "", "holder identity")
	lease := flag.Duration("lease-duration", 3*time.Second, "")
	renew := flag.Duration("renew-deadline", 2*time.Second, "")
	retry := flag.Duration("retry-period", time.Second, "")
	flag.Parse()

	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	client := kubernetes.NewForConfigOrDie(cfg)
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: *namespace, Name: *name},
		Client:     client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: *identity},
	}
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() { <-sigs; cancel() }()
	leaderelection.RunOrDie(ctx, leaderelection.LeaderElectionConfig{
		Lock:            lock,
		ReleaseOnCancel: true,
		LeaseDuration:   *lease,
		RenewDeadline:   *renew,
		RetryPeriod:     *retry,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) { say("started-leading", *identity) },
			OnStoppedLeading: func() { say("stopped-leading", *identity) },
			OnNewLeader:      func(id string) { say("new-leader", id) },
		},
	})
}
