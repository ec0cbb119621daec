#compdef relayctl

_relayctl_completion() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" _RELAYCTL_COMPLETE=complete_zsh relayctl)
}

compdef _relayctl_completion relayctl
