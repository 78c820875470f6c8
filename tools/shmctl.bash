# shmctl.bash - bash completion for shmctl (installed as share/bash-completion/completions/shmctl).
#
# Completes the commands, the options that apply to each (as tools/shmctl.c's table says), the
# instance names of --name (segments in /dev/shm named shmb.<name>) and session ids for show,
# events and delete (the first column of `shmctl sessions`, which reads the segment only).
_shmctl()
{
	local cur prev words cword
	_init_completion 2>/dev/null || {
		cur=${COMP_WORDS[COMP_CWORD]}
		prev=${COMP_WORDS[COMP_CWORD - 1]}
		words=("${COMP_WORDS[@]}")
		cword=$COMP_CWORD
	}
	local commands="status sessions show events workers delete verify top ping stop metrics
		reload dump restore help"
	local name="" cmd="" i
	for ((i = 1; i < cword; i++)); do
		case ${words[i]} in
		--name) name=${words[i + 1]}; ((i++)) ;;
		--name=*) name=${words[i]#--name=} ;;
		--tenant | --after | --stream | --iterations | --interval-ms | --listen) ((i++)) ;;
		-*) ;;
		*) [[ -z $cmd ]] && cmd=${words[i]} ;;
		esac
	done

	case $prev in
	--name)
		local names
		names=$(compgen -G '/dev/shm/shmb.*' | sed 's|^/dev/shm/shmb\.||')
		COMPREPLY=($(compgen -W "$names" -- "$cur"))
		return
		;;
	--tenant | --after | --stream | --iterations | --interval-ms | --listen)
		return
		;;
	esac

	if [[ $cur == -* ]]; then
		local opts="--name --json --help --version"
		case $cmd in
		sessions) opts+=" --tenant" ;;
		events) opts+=" --after --stream --follow" ;;
		top) opts="--name --iterations --interval-ms" ;;
		metrics) opts+=" --listen" ;;
		esac
		COMPREPLY=($(compgen -W "$opts" -- "$cur"))
		return
	fi
	if [[ -z $cmd ]]; then
		COMPREPLY=($(compgen -W "$commands" -- "$cur"))
		return
	fi
	case $cmd in
	show | events | delete)
		local sids
		sids=$(shmctl ${name:+--name "$name"} sessions 2>/dev/null | awk 'NR > 1 {print $1}')
		COMPREPLY=($(compgen -W "$sids" -- "$cur"))
		;;
	restore | dump)
		COMPREPLY=($(compgen -f -- "$cur"))
		;;
	esac
}
complete -F _shmctl shmctl
