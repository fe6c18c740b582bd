//go:build tools

// Package tools pins Argo CD for hack/build-tools.sh --argocd.
package tools

import _ "github.com/argoproj/argo-cd/v3/cmd"
