# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_ecr_edge_global_optspecs
    string join \n V/version verbose config= h/help
end

function __fish_ecr_edge_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_ecr_edge_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_ecr_edge_using_subcommand
    set -l cmd (__fish_ecr_edge_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c ecr-edge -n "__fish_ecr_edge_needs_command" -l config -d 'Configuration file [default: $ECR_EDGE_CONFIG, else /etc/ecr-edge/config.toml]' -r -F
complete -c ecr-edge -n "__fish_ecr_edge_needs_command" -s V -l version -d 'Print version and target triple'
complete -c ecr-edge -n "__fish_ecr_edge_needs_command" -l verbose -d 'With --version: also the commit, build date, target, compiler and features'
complete -c ecr-edge -n "__fish_ecr_edge_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c ecr-edge -n "__fish_ecr_edge_needs_command" -f -a "helper" -d 'Docker credential helper actions (what docker-credential-ecr-edge runs)'
complete -c ecr-edge -n "__fish_ecr_edge_needs_command" -f -a "credentials" -d 'Print the device\'s exchanged IoT role credentials as credential_process JSON (for `credential_process = ecr-edge credentials` in ~/.aws/config)'
complete -c ecr-edge -n "__fish_ecr_edge_needs_command" -f -a "daemon" -d 'Run the refresher daemon: keep tokens warm, serve them on the local socket, write sinks ([daemon] in the configuration). For systemd (Type=notify)'
complete -c ecr-edge -n "__fish_ecr_edge_needs_command" -f -a "status" -d 'Ask the daemon for each registry\'s expiry, last refresh, last error and next attempt. Exits 0 when every registry has a usable token, 1 when one has not, 2 without a daemon'
complete -c ecr-edge -n "__fish_ecr_edge_needs_command" -f -a "refresh" -d 'Ask the daemon to refresh now (each registry it holds, or those named), e.g. before a planned outage, and print each result and the offline runway after it. Exits 0 when every refresh got a token, 1 when one did not, 2 without a daemon'
complete -c ecr-edge -n "__fish_ecr_edge_needs_command" -f -a "iot" -d 'The device\'s AWS IoT key: make it where it lives (TPM or a new 0600 file) and print a certificate signing request for it, so the private key is never copied anywhere'
complete -c ecr-edge -n "__fish_ecr_edge_needs_command" -f -a "kubelet-credential-provider" -d 'The kubelet image credential provider: a CredentialProviderRequest on stdin, the response on stdout (what ecr-edge-credential-provider runs; see configure --k3s)'
complete -c ecr-edge -n "__fish_ecr_edge_needs_command" -f -a "doctor" -d 'Check this device: CPU and helpers, credHelpers keys, config, network, clock, credentials, and images a pull will need. Exits 0 only when nothing failed'
complete -c ecr-edge -n "__fish_ecr_edge_needs_command" -f -a "configure" -d 'Add exact credHelpers entries naming ecr-edge to the Docker config (and, with --containers, the containers auth file), keeping everything else in the file'
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand helper" -l config -d 'Configuration file [default: $ECR_EDGE_CONFIG, else /etc/ecr-edge/config.toml]' -r -F
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand helper" -s h -l help -d 'Print help'
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand credentials" -l config -d 'Configuration file [default: $ECR_EDGE_CONFIG, else /etc/ecr-edge/config.toml]' -r -F
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand credentials" -s h -l help -d 'Print help'
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand daemon" -l config -d 'Configuration file [default: $ECR_EDGE_CONFIG, else /etc/ecr-edge/config.toml]' -r -F
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand daemon" -l check -d 'Only check whether the daemon is configured, for systemd\'s ExecCondition=: exit 0 when the configuration has a [daemon] section, 1 (the service is skipped, not failed) when it has none, 255 (the start fails) when the file is invalid'
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand daemon" -s h -l help -d 'Print help'
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand status" -l config -d 'Configuration file [default: $ECR_EDGE_CONFIG, else /etc/ecr-edge/config.toml]' -r -F
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand status" -l json -d 'Machine-readable output'
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand status" -s h -l help -d 'Print help'
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand refresh" -l config -d 'Configuration file [default: $ECR_EDGE_CONFIG, else /etc/ecr-edge/config.toml]' -r -F
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand refresh" -s h -l help -d 'Print help'
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand iot; and not __fish_seen_subcommand_from keygen csr" -l config -d 'Configuration file [default: $ECR_EDGE_CONFIG, else /etc/ecr-edge/config.toml]' -r -F
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand iot; and not __fish_seen_subcommand_from keygen csr" -s h -l help -d 'Print help'
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand iot; and not __fish_seen_subcommand_from keygen csr" -f -a "keygen" -d 'Make an EC P-256 device key: in the TPM, kept at a persistent handle (--tpm), or in a new file only its owner can read (--out). An existing key is never replaced'
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand iot; and not __fish_seen_subcommand_from keygen csr" -f -a "csr" -d 'Print a PEM certificate signing request signed by the device key, for `aws iot create-certificate-from-csr` or the fleet\'s CA'
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand iot; and __fish_seen_subcommand_from keygen" -l tpm -d 'Make the key in the TPM; optionally which one, in the tpm2-tss form (swtpm:host=127.0.0.1,port=2321)' -r
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand iot; and __fish_seen_subcommand_from keygen" -l handle -d 'The persistent handle for the TPM key' -r
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand iot; and __fish_seen_subcommand_from keygen" -l out -d 'Make a key file instead (PKCS#8 PEM, mode 0600), for devices without a TPM' -r -F
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand iot; and __fish_seen_subcommand_from keygen" -l config -d 'Configuration file [default: $ECR_EDGE_CONFIG, else /etc/ecr-edge/config.toml]' -r -F
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand iot; and __fish_seen_subcommand_from keygen" -s h -l help -d 'Print help'
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand iot; and __fish_seen_subcommand_from csr" -l key -d 'The key, as [iot] key names it: a file, handle:0x81000001 or credential:NAME' -r
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand iot; and __fish_seen_subcommand_from csr" -l subject -d 'The subject, such as CN=edge-thing-0001 (CN, O, OU, C, ST, L)' -r
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand iot; and __fish_seen_subcommand_from csr" -l tpm -d 'The TPM that holds a handle: key (tpm2-tss form; default device:/dev/tpmrm0)' -r
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand iot; and __fish_seen_subcommand_from csr" -l config -d 'Configuration file [default: $ECR_EDGE_CONFIG, else /etc/ecr-edge/config.toml]' -r -F
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand iot; and __fish_seen_subcommand_from csr" -s h -l help -d 'Print help'
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand kubelet-credential-provider" -l config -d 'Configuration file [default: $ECR_EDGE_CONFIG, else /etc/ecr-edge/config.toml]' -r -F
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand kubelet-credential-provider" -s h -l help -d 'Print help'
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand doctor" -l image -d 'An image to check as a pull would (repeatable): the manifest its tag points to, a variant for this device\'s platform, the permission to read it and its layers' -r
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand doctor" -l platform -d 'The platform images must have (default: this device\'s, e.g. linux/arm/v7)' -r
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand doctor" -l config -d 'Configuration file [default: $ECR_EDGE_CONFIG, else /etc/ecr-edge/config.toml]' -r -F
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand doctor" -l json -d 'Machine-readable output'
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand doctor" -s h -l help -d 'Print help'
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand configure" -l registry -d 'Registry host (repeatable); URLs are reduced to the bare host' -r
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand configure" -l account -d 'With --region: the private registry of this 12-digit account' -r
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand configure" -l region -d 'With --account: the registry\'s region' -r
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand configure" -l docker-config -d 'The Docker config file [default: $DOCKER_CONFIG/config.json or ~/.docker/config.json]' -r -F
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand configure" -l replace -d 'Move from another helper (`ecr-login`): its credHelpers entries name ecr-edge, and a credsStore naming it becomes entries for the ECR registries listed under auths' -r
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand configure" -l kubelet-config -d 'Write a kubelet CredentialProviderConfig to PATH (plain kubelets), and the provider link in /usr/libexec/ecr-edge' -r -F
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand configure" -l root -d 'With --k3s or --kubelet-config: install under DIR (an image\'s root file system)' -r -F
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand configure" -l config -d 'Configuration file [default: $ECR_EDGE_CONFIG, else /etc/ecr-edge/config.toml]' -r -F
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand configure" -l containers -d 'Also the containers auth file ($REGISTRY_AUTH_FILE or ~/.config/containers/auth.json)'
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand configure" -l remove -d 'Take the entries out instead (only entries naming ecr-edge); with --k3s or --kubelet-config, the provider link and the configuration file configure made'
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand configure" -l dry-run -d 'Print the changes without writing'
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand configure" -l k3s -d 'Install the kubelet image credential provider for k3s: the provider link and config.yaml in /var/lib/rancher/credentialprovider (k3s uses them when both exist)'
complete -c ecr-edge -n "__fish_ecr_edge_using_subcommand configure" -s h -l help -d 'Print help'
