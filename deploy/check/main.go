// Command check validates parkscope's Kubernetes manifests against the Kubernetes API types
// (k8s.io/api): every document must decode strictly (unknown or mistyped fields fail), and the
// security settings parkscope promises must hold — no privileged mode, read-only root filesystem,
// exactly the capability SYS_PTRACE.
//
// Usage: go run . ../kubernetes/*.yaml
package main

import (
	"bytes"
	"fmt"
	"os"
	"sort"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// The daemon reads memory only: SYS_PTRACE is all it needs (tests/e2e/capabilities.rs).
var wantCaps = []string{"SYS_PTRACE"}

func main() {
	failed := false
	for _, path := range os.Args[1:] {
		if err := checkFile(path); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
			failed = true
		} else {
			fmt.Printf("%s: ok\n", path)
		}
	}
	if failed || len(os.Args) < 2 {
		os.Exit(1)
	}
}

func checkFile(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	for i, doc := range bytes.Split(data, []byte("\n---")) {
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		var meta struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		}
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			return fmt.Errorf("document %d: %v", i, err)
		}
		if err := checkDoc(meta.APIVersion+"/"+meta.Kind, doc); err != nil {
			return fmt.Errorf("document %d (%s): %v", i, meta.Kind, err)
		}
	}
	return nil
}

func stripComments(doc []byte) []byte {
	var out []string
	for _, line := range strings.Split(string(doc), "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			out = append(out, line)
		}
	}
	return []byte(strings.Join(out, "\n"))
}

func checkDoc(kind string, doc []byte) error {
	switch kind {
	case "v1/Namespace":
		var ns corev1.Namespace
		return yaml.UnmarshalStrict(doc, &ns)
	case "apps/v1/DaemonSet":
		var ds appsv1.DaemonSet
		if err := yaml.UnmarshalStrict(doc, &ds); err != nil {
			return err
		}
		if !ds.Spec.Template.Spec.HostPID {
			return fmt.Errorf("a node-wide DaemonSet needs hostPID to see the host's processes")
		}
		return checkPod(ds.Spec.Template.Spec, "parkscope")
	case "apps/v1/Deployment":
		var d appsv1.Deployment
		if err := yaml.UnmarshalStrict(doc, &d); err != nil {
			return err
		}
		spec := d.Spec.Template.Spec
		if spec.ShareProcessNamespace == nil || !*spec.ShareProcessNamespace {
			return fmt.Errorf("a sidecar needs shareProcessNamespace to see the service")
		}
		return checkPod(spec, "parkscope")
	default:
		return fmt.Errorf("unexpected kind %q", kind)
	}
}

func checkPod(spec corev1.PodSpec, container string) error {
	for _, c := range spec.Containers {
		if c.Name != container {
			continue
		}
		sc := c.SecurityContext
		if sc == nil {
			return fmt.Errorf("container %s has no securityContext", c.Name)
		}
		if sc.Privileged != nil && *sc.Privileged {
			return fmt.Errorf("container %s must not be privileged", c.Name)
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			return fmt.Errorf("container %s must have a read-only root filesystem", c.Name)
		}
		if sc.Capabilities == nil {
			return fmt.Errorf("container %s must drop ALL and add only %v", c.Name, wantCaps)
		}
		var add []string
		for _, cap := range sc.Capabilities.Add {
			add = append(add, string(cap))
		}
		sort.Strings(add)
		if strings.Join(add, ",") != strings.Join(wantCaps, ",") {
			return fmt.Errorf("container %s adds %v, want exactly %v", c.Name, add, wantCaps)
		}
		if len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" {
			return fmt.Errorf("container %s must drop ALL capabilities first", c.Name)
		}
		return nil
	}
	return fmt.Errorf("no container named %s", container)
}
