"""Stage compare (workflow/compare.smk): the leaderboard, paired bootstrap differences to the leader."""
