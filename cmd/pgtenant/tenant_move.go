package main

import "github.com/spf13/cobra"

func newTenantMoveCmd(a *app) *cobra.Command { return &cobra.Command{Use: "move", Hidden: true} }
