//! The PTB lexer: the token rules of Stanford CoreNLP 3.4.1's `PTBLexer` with the options that
//! `PTBTokenizer -preserveLines` gives it (`tokenizeNLs`; every other option at its default:
//! PTB3 escaping of brackets, LaTeX-style quotes, `...` ellipses, `--` dashes, no slash or
//! asterisk escaping, no americanisation, untokenizable characters deleted).
//!
//! Matching follows JFlex: at each position every rule is tried, the longest match wins (a rule
//! `r1/r2` with trailing context counts the context in its length), ties go to the earlier rule,
//! and the token of a trailing-context rule ends at the last position where `r1` can end and
//! `r2` still matches the rest. Input is UTF-16, as Java sees it.

use std::collections::HashMap;

use super::regex::{ClassMap, PatternError, Regex, SetRegistry};

/// Named sub-patterns referenced as `{NAME}` by the rules.
const MACROS: &[(&str, &str)] = &[
    (
        "SGML",
        r#"\<([!\?][A-Za-z\-][^>\r\n]*|[A-Za-z][A-Za-z0-9_:\.\-]*([ ]+([A-Za-z][A-Za-z0-9_:\.\-]*|[A-Za-z][A-Za-z0-9_:\.\-]*[ ]*=[ ]*('[^']*'|\"[^\"]*\")))*[ ]*\/?|\/[A-Za-z][A-Za-z0-9_:\.\-]*)[ ]*\>"#,
    ),
    (
        "SPMDASH",
        r"&(MD|mdash|ndash);|[\u0096\u0097\u2013\u2014\u2015]",
    ),
    ("SPAMP", r"&amp;"),
    ("SPPUNC", r"&(HT|TL|UR|LR|QC|QL|QR|odq|cdq|#[0-9]+);"),
    ("SPLET", r"&[aeiouAEIOU](acute|grave|uml);"),
    ("SPACE", r"[ \t\u00A0\u2000-\u200A\u3000]"),
    ("SPACES", r"{SPACE}+"),
    ("NEWLINE", r"\r|\r?\n|\u2028|\u2029|\u000B|\u000C|\u0085"),
    ("SPACENL", r"({SPACE}|{NEWLINE})"),
    ("SPACENLS", r"{SPACENL}+"),
    ("SENTEND", r"{SPACENL}({SPACENL}|[:uppercase:]|{SGML})"),
    ("DIGIT", r"[:digit:]|[\u07C0-\u07C9]"),
    ("DATE", r"{DIGIT}{1,2}[\-\/]{DIGIT}{1,2}[\-\/]{DIGIT}{2,4}"),
    (
        "NUM",
        r"{DIGIT}+|{DIGIT}*([.:,\u00AD\u066B\u066C]{DIGIT}+)+",
    ),
    ("NUMBER", r"[\-+]?{NUM}"),
    (
        "SUBSUPNUM",
        r"[\u207A\u207B\u208A\u208B]?([\u2070\u00B9\u00B2\u00B3\u2074-\u2079]+|[\u2080-\u2089]+)",
    ),
    (
        "FRAC",
        r"({DIGIT}{1,4}[- \u00A0])?{DIGIT}{1,4}(\\?\/|\u2044){DIGIT}{1,4}",
    ),
    ("FRAC2", r"[\u00BC\u00BD\u00BE\u2153-\u215E]"),
    ("DOLSIGN", r"([A-Z]*\$|#)"),
    (
        "DOLSIGN2",
        r"[\u00A2\u00A3\u00A4\u00A5\u0080\u20A0\u20AC\u060B\u0E3F\u20A4\uFFE0\uFFE1\uFFE5\uFFE6]",
    ),
    (
        "LETTER",
        r"([:letter:]|{SPLET}|[\u00AD\u0237-\u024F\u02C2-\u02C5\u02D2-\u02DF\u02E5-\u02FF\u0300-\u036F\u0370-\u037D\u0384\u0385\u03CF\u03F6\u03FC-\u03FF\u0483-\u0487\u04CF\u04F6-\u04FF\u0510-\u0525\u055A-\u055F\u0591-\u05BD\u05BF\u05C1\u05C2\u05C4\u05C5\u05C7\u0615-\u061A\u063B-\u063F\u064B-\u065E\u0670\u06D6-\u06EF\u06FA-\u06FF\u070F\u0711\u0730-\u074F\u0750-\u077F\u07A6-\u07B1\u07CA-\u07F5\u07FA\u0900-\u0903\u093C\u093E-\u094E\u0951-\u0955\u0962-\u0963\u0981-\u0983\u09BC-\u09C4\u09C7\u09C8\u09CB-\u09CD\u09D7\u09E2\u09E3\u0A01-\u0A03\u0A3C\u0A3E-\u0A4F\u0A81-\u0A83\u0ABC-\u0ACF\u0B82\u0BBE-\u0BC2\u0BC6-\u0BC8\u0BCA-\u0BCD\u0C01-\u0C03\u0C3E-\u0C56\u0D3E-\u0D44\u0D46-\u0D48\u0E30-\u0E3A\u0E47-\u0E4E\u0EB1-\u0EBC\u0EC8-\u0ECD])",
    ),
    (
        "WORD",
        r"{LETTER}({LETTER}|{DIGIT})*([.!?]{LETTER}({LETTER}|{DIGIT})*)*",
    ),
    (
        "FILENAME_EXT",
        r"bat|bmp|c|class|cgi|cpp|dll|doc|docx|exe|gif|gz|h|htm|html|jar|java|jpeg|jpg|mov|mp3|pdf|php|pl|png|ppt|ps|py|sql|tar|txt|wav|x|xml|zip",
    ),
    (
        "FILENAME",
        r"({LETTER}|{DIGIT})+([.]({LETTER}|{DIGIT})+)*([.]{FILENAME_EXT})",
    ),
    (
        "THING",
        r"([dDoOlL]{APOSETCETERA}([:letter:]|[:digit:]))?([:letter:]|[:digit:])+({HYPHEN}([dDoOlL]{APOSETCETERA}([:letter:]|[:digit:]))?([:letter:]|[:digit:])+)*",
    ),
    ("THINGA", r"[A-Z]+(([+&]|{SPAMP})[A-Z]+)+"),
    (
        "THING3",
        r"[A-Za-z0-9]+(-[A-Za-z]+){0,2}(\\?\/[A-Za-z0-9]+(-[A-Za-z]+){0,2}){1,2}",
    ),
    ("APOS", r"['\u0092\u2019]|&apos;"),
    ("APOSETCETERA", r"{APOS}|[`\u0091\u2018\u201B]"),
    (
        "HTHING",
        r"[A-Za-z0-9][A-Za-z0-9.,\u00AD]*(-([A-Za-z0-9\u00AD]+|{ACRO2}\.))+",
    ),
    ("REDAUX", r"{APOS}([msdMSD]|re|ve|ll)"),
    ("SWORD", r"[A-Za-z\u00AD]*[A-MO-Za-mo-z](\u00AD)*"),
    ("SREDAUX", r"n{APOSETCETERA}t"),
    (
        "APOWORD",
        r"{APOS}n{APOS}?|[lLdDjJ]{APOS}|Dunkin{APOS}|somethin{APOS}|ol{APOS}|{APOS}em|[A-HJ-XZn]{APOSETCETERA}[:letter:]{2}[:letter:]*|{APOS}[2-9]0s|{APOS}till?|[:letter:][:letter:]*[aeiouyAEIOUY]{APOSETCETERA}[aeiouA-Z][:letter:]*|{APOS}cause|cont'd\.?|'twas|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l|O{APOSETCETERA}o",
    ),
    ("APOWORD2", r"y{APOS}"),
    (
        "FULLURL",
        r#"https?:\/\/[^ \t\n\f\r\"<>|(){}]+[^ \t\n\f\r\"<>|.!?(){},-]"#,
    ),
    (
        "LIKELYURL",
        r#"((www\.([^ \t\n\f\r\"<>|.!?(){},]+\.)+[a-zA-Z]{2,4})|(([^ \t\n\f\r\"`'<>|.!?(){},-_$]+\.)+(com|net|org|edu)))(\/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-])?"#,
    ),
    (
        "EMAIL",
        r#"(&lt;|<)?[a-zA-Z0-9][^ \t\n\f\r\"<>|()\u00A0{}]*@([^ \t\n\f\r\"<>|(){}.\u00A0]+\.)*([^ \t\n\f\r\"<>|(){}.\u00A0]+)(&gt;|>)?"#,
    ),
    ("TWITTER_NAME", r"@[a-zA-Z_][a-zA-Z_0-9]*"),
    ("TWITTER_CATEGORY", r"#{LETTER}+"),
    ("TWITTER", r"{TWITTER_NAME}|{TWITTER_CATEGORY}"),
    (
        "ABMONTH",
        r"Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec",
    ),
    ("ABDAYS", r"Mon|Tue|Tues|Wed|Thu|Thurs|Fri"),
    (
        "ABSTATE",
        r"Ala|Ariz|[A]z|[A]rk|Calif|Colo|Conn|Ct|Dak|[D]el|Fla|Ga|[I]ll|Ind|Kans?|Ky|[L]a|[M]ass|Md|Mich|Minn|[M]iss|Mo|Mont|Neb|Nev|Okla|[O]re|[P]a|Penn|Tenn|[T]ex|Va|Vt|[W]ash|Wisc?|Wyo",
    ),
    (
        "ABCOMP",
        r"Inc|Cos?|Corp|Pp?t[ye]s?|Ltd|Plc|Rt|Bancorp|Bhd|Assn|Univ|Intl|Sys",
    ),
    ("ABNUM", r"tel|est|ext|sq"),
    ("ABPTIT", r"Jr|Sr|Bros|(Ed|Ph)\.D|Blvd|Rd|Esq"),
    (
        "ABBREV1",
        r"({ABMONTH}|{ABDAYS}|{ABSTATE}|{ABCOMP}|{ABNUM}|{ABPTIT}|etc|al|seq|Bldg)\.",
    ),
    (
        "ACRO",
        r"[A-Za-z](\.[A-Za-z])*|(Canada|Sino|Korean|EU|Japan|non)-U\.S|U\.S\.-(U\.K|U\.S\.S\.R)",
    ),
    (
        "ACRO2",
        r"[A-Za-z](\.[A-Za-z])+|(Canada|Sino|Korean|EU|Japan|non)-U\.S|U\.S\.-(U\.K|U\.S\.S\.R)",
    ),
    (
        "ABTITLE",
        r"Mr|Mrs|Ms|[M]iss|Drs?|Profs?|Sens?|Reps?|Attys?|Lt|Col|Gen|Messrs|Govs?|Adm|Rev|Maj|Sgt|Cpl|Pvt|Capt|Ste?|Ave|Pres|Lieut|Hon|Brig|Co?mdr|Pfc|Spc|Supts?|Det|Mt|Ft|Adj|Adv|Asst|Assoc|Ens|Insp|Mlle|Mme|Msgr|Sfc",
    ),
    ("ABCOMP2", r"Invt|Elec|Natl|M[ft]g|Dept"),
    (
        "ABBREV4",
        r"{ABTITLE}|vs|Alex|Wm|Jos|Cie|a\.k\.a|cf|TREAS|Ph|{ACRO}|{ABCOMP2}",
    ),
    ("ABBREV2", r"{ABBREV4}\."),
    ("ACRONYM", r"({ACRO})\."),
    ("ABBREV3", r"(ca|figs?|prop|nos?|art|bldg|prop|pp|op)\."),
    (
        "PHONE",
        r"(\([0-9]{2,3}\)[ \u00A0]?|(\+\+?)?([0-9]{2,4}[\- \u00A0])?[0-9]{2,4}[\- \u00A0])[0-9]{3,4}[\- \u00A0]?[0-9]{3,5}|((\+\+?)?[0-9]{2,4}\.)?[0-9]{2,4}\.[0-9]{3,4}\.[0-9]{3,5}",
    ),
    ("FAKEDUCKFEET", r"<<|>>"),
    ("LESSTHAN", r"<|&lt;"),
    ("GREATERTHAN", r">|&gt;"),
    ("HYPHEN", r"[-_\u058A\u2010\u2011]"),
    ("HYPHENS", r"\-+"),
    ("LDOTS", r"\.{3,5}|(\.[ \u00A0]){2,4}\.|[\u0085\u2026]"),
    ("ATS", r"@+"),
    ("UNDS", r"_+"),
    ("ASTS", r"\*+|(\\\*){1,3}"),
    ("HASHES", r"#+"),
    ("FNMARKS", r"{ATS}|{HASHES}|{UNDS}"),
    ("INSENTP", r"[,;:\u3001]"),
    (
        "QUOTES",
        r"{APOS}|''|[`\u2018\u2019\u201A\u201B\u201C\u201D\u0091\u0092\u0093\u0094\u201E\u201F\u2039\u203A\u00AB\u00BB]{1,2}",
    ),
    ("DBLQUOT", r#"\"|&quot;"#),
    (
        "TBSPEC",
        r"-(RRB|LRB|RCB|LCB|RSB|LSB)-|C\.D\.s|pro-|anti-|S(&|&amp;)P-500|S(&|&amp;)Ls|Cap{APOS}n|c{APOS}est",
    ),
    ("TBSPEC2", r"{APOS}[0-9][0-9]"),
    ("SMILEY", r"[<>]?[:;=][\-o\*']?[\(\)DPdpO\\{@\|\[\]]"),
    (
        "ASIANSMILEY",
        r"[\^x=~<>]\.\[\^x=~<>]|[\-\^x=~<>']_[\-\^x=~<>']|\([\-\^x=~<>'][_.]?[\-\^x=~<>']\)|\([\^x=~<>']-[\^x=~<>'`]\)",
    ),
    (
        "MISCSYMBOL",
        r"[+%&~\^|\\¦\u00A7¨\u00A9\u00AC\u00AE¯\u00B0-\u00B3\u00B4-\u00BA\u00D7\u00F7\u0387\u05BE\u05C0\u05C3\u05C6\u05F3\u05F4\u0600-\u0603\u0606-\u060A\u060C\u0614\u061B\u061E\u066A\u066D\u0703-\u070D\u07F6\u07F7\u07F8\u0964\u0965\u0E4F\u1FBD\u2016\u2017\u2020-\u2023\u2030-\u2038\u203B\u203E-\u2042\u2044\u207A-\u207F\u208A-\u208E\u2100-\u214F\u2190-\u21FF\u2200-\u2BFF\u3012\u30FB\uFF01-\uFF0F\uFF1A-\uFF20\uFF3B-\uFF40\uFF5B-\uFF65\uFF65]",
    ),
    (
        "ACRONYM_CONTEXT",
        r"({SPACENLS})([A]bout|[A]ccording|[A]dditionally|[A]fter|[A]n|[A]|[A]s|[A]t|[B]ut|[E]arlier|[H]e|[H]er|[H]ere|[H]owever|[I]f|[I]n|[I]t|[L]ast|[M]any|[M]ore|[M]r\.|[M]s\.|[N]ow|[O]nce|[O]ne|[O]ther|[O]ur|[S]he|[S]ince|[S]o|[S]ome|[S]uch|[T]hat|[T]he|[T]heir|[T]hen|[T]here|[T]hese|[T]hey|[T]his|[W]e|[W]hen|[W]hile|[W]hat|[Y]et|[Y]ou|{SGML}){SPACENL}",
    ),
];

/// What a rule does with the text it matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// The matched text is the token.
    Keep,
    /// Keep all but the last `n` units; they are scanned again (`cannot` → `can` + `not`).
    PushBack(usize),
    /// Spaces become no-break spaces (SGML tags, fractions).
    SpaceToNbsp,
    /// `--`.
    Dash,
    /// `&amp;` becomes `&`.
    Amp,
    /// Soft hyphens removed.
    SoftHyphen,
    /// LaTeX quotes, guessing an opening (`true`) or closing quote.
    Quote(bool),
    /// Vulgar fractions spelt out.
    Fraction,
    /// Currency signs normalised.
    Currency,
    /// Acronym before a likely sentence start: `I.` gives `I`; longer ones keep their period as
    /// a token and also leave it to be scanned again.
    AcronymEnd,
    /// Abbreviation at a sentence end: the token keeps its period, which is scanned again.
    AbbrevEnd,
    /// Phone number: spaces to no-break spaces, parentheses to `-LRB-`/`-RRB-`.
    Phone,
    /// Parentheses to `-LRB-`/`-RRB-`.
    Parens,
    /// A fixed replacement text.
    Text(&'static str),
    /// Runs of hyphens; three or four become `--`.
    Hyphens,
    /// `...`.
    Ellipsis,
    /// No token (white space, DEL, `&nbsp;`).
    Skip,
    /// A line break: with `-preserveLines` the printer starts a new line.
    Newline,
    /// A character no rule accepts: deleted (the lexer logs a warning).
    Untokenizable,
}

/// The rules in JFlex priority order: (pattern, trailing context, action).
const RULES: &[(&str, Option<&str>, Action)] = &[
    (r"c[+][+]", None, Action::Keep),
    (r"(c|f)#", None, Action::Keep),
    (r"cannot", None, Action::PushBack(3)),
    (r"'twas", None, Action::PushBack(3)),
    (r"'tis", None, Action::PushBack(2)),
    (r"gonna|gotta|lemme|gimme|wanna", None, Action::PushBack(2)),
    (r"{SGML}", None, Action::SpaceToNbsp),
    (r"{SPMDASH}", None, Action::Dash),
    (r"{SPAMP}", None, Action::Amp),
    (r"{SPPUNC}", None, Action::Keep),
    (r"{WORD}", Some(r"{REDAUX}"), Action::SoftHyphen),
    (r"{SWORD}", Some(r"{SREDAUX}"), Action::SoftHyphen),
    (r"{WORD}", None, Action::SoftHyphen),
    (r"{APOWORD}", None, Action::Keep),
    (r"{APOWORD2}", Some(r"[:letter:]"), Action::Keep),
    (r"{FULLURL}", None, Action::Keep),
    (r"{LIKELYURL}", None, Action::Keep),
    (r"{EMAIL}", None, Action::Keep),
    (r"{TWITTER}", None, Action::Keep),
    (r"{REDAUX}", Some(r"[^A-Za-z]"), Action::Quote(false)),
    (r"{SREDAUX}", Some(r"[^A-Za-z]"), Action::Quote(false)),
    (r"{DATE}", None, Action::Keep),
    (r"{NUMBER}", None, Action::SoftHyphen),
    (r"{SUBSUPNUM}", None, Action::Keep),
    (r"{FRAC}", None, Action::SpaceToNbsp),
    (r"{FRAC2}", None, Action::Fraction),
    (r"{TBSPEC}", None, Action::Amp),
    (r"{THING3}", None, Action::Keep),
    (r"{DOLSIGN}", None, Action::Keep),
    (r"{DOLSIGN2}", None, Action::Currency),
    (r"{ACRONYM}", Some(r"{ACRONYM_CONTEXT}"), Action::AcronymEnd),
    (r"{ABBREV3}", Some(r"{SPACENL}?[:digit:]"), Action::Keep),
    (r"(pt[eyEY]|co)\.", Some(r"{SPACE}(ltd|lim)"), Action::Keep),
    (r"{ABBREV1}", Some(r"{SENTEND}"), Action::AbbrevEnd),
    (r"{ABBREV1}", Some(r"[^][^]"), Action::Keep),
    (r"{ABBREV1}", None, Action::AbbrevEnd),
    (r"{ABBREV2}", None, Action::Keep),
    (r"{ABBREV4}", Some(r"{SPACE}"), Action::Keep),
    (r"{ACRO}", Some(r"{SPACENL}"), Action::Keep),
    (r"{TBSPEC2}", Some(r"{SPACENL}"), Action::Keep),
    (r"{FILENAME}", Some(r"({SPACENL}|[.?!,])"), Action::Keep),
    (r"{WORD}\.", Some(r"{INSENTP}"), Action::SoftHyphen),
    (r"{PHONE}", None, Action::Phone),
    (r"{DBLQUOT}", Some(r"[A-Za-z0-9$]"), Action::Quote(true)),
    (r"{DBLQUOT}", None, Action::Quote(false)),
    (r"\x7f", None, Action::Skip),
    (r"{LESSTHAN}", None, Action::Text("<")),
    (r"{GREATERTHAN}", None, Action::Text(">")),
    (r"{SMILEY}", Some(r"[^A-Za-z0-9]"), Action::Parens),
    (r"{ASIANSMILEY}", None, Action::Parens),
    (r"\{", None, Action::Text("-LCB-")),
    (r"\}", None, Action::Text("-RCB-")),
    (r"\[", None, Action::Text("-LSB-")),
    (r"\]", None, Action::Text("-RSB-")),
    (r"\(", None, Action::Text("-LRB-")),
    (r"\)", None, Action::Text("-RRB-")),
    (r"{HYPHENS}", None, Action::Hyphens),
    (r"{LDOTS}", None, Action::Ellipsis),
    (r"{FNMARKS}", None, Action::Keep),
    (r"{ASTS}", None, Action::Keep),
    (r"{INSENTP}", None, Action::Keep),
    (r"[?!]+", None, Action::Keep),
    (
        r"[.¡¿\u037E\u0589\u061F\u06D4\u0700-\u0702\u07FA\u3002]",
        None,
        Action::Keep,
    ),
    (r"=", None, Action::Keep),
    (r"\/", None, Action::Keep),
    (r"{HTHING}\.", Some(r"{INSENTP}"), Action::SoftHyphen),
    (r"{HTHING}", None, Action::SoftHyphen),
    (r"{THING}\.", Some(r"{INSENTP}"), Action::Keep),
    (r"{THING}", None, Action::Keep),
    (r"{THINGA}\.", Some(r"{INSENTP}"), Action::Amp),
    (r"{THINGA}", None, Action::Amp),
    (r"'", Some(r"[A-Za-z][^ \t\n\r\u00A0]"), Action::Quote(true)),
    (r"{REDAUX}", None, Action::Quote(false)),
    (r"{SREDAUX}", None, Action::Quote(false)),
    (r"{QUOTES}", None, Action::Quote(false)),
    (r"{FAKEDUCKFEET}", None, Action::Keep),
    (r"{MISCSYMBOL}", None, Action::Keep),
    (
        r"\0|{SPACES}|[\u200B\u200E-\u200F\uFEFF]",
        None,
        Action::Skip,
    ),
    (r"{NEWLINE}", None, Action::Newline),
    (r"&nbsp;", None, Action::Skip),
    (r".", None, Action::Untokenizable),
];

struct Rule {
    head: Regex,
    context: Option<Regex>,
    action: Action,
}

/// One lexed token: its (normalised, not yet lower-cased) text, or a line break.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Token {
    Word(String),
    Newline,
}

/// The compiled rule set with its lazily built automata (so it is used mutably).
pub(super) struct Lexer {
    rules: Vec<Rule>,
    classes: ClassMap,
    ends: Vec<usize>,
    /// Per character class, the rules whose pattern can start with it (filled lazily).
    candidates: Vec<Option<Vec<u8>>>,
}

impl Lexer {
    pub(super) fn new() -> Result<Lexer, PatternError> {
        let macros: HashMap<&'static str, &'static str> = MACROS.iter().copied().collect();
        let mut registry = SetRegistry::default();
        let mut rules = Vec::with_capacity(RULES.len());
        for &(head, context, action) in RULES {
            let head = Regex::new(head, &macros, &mut registry)?;
            let context = context
                .map(|c| Regex::new(c, &macros, &mut registry))
                .transpose()?;
            rules.push(Rule {
                head,
                context,
                action,
            });
        }
        let classes = ClassMap::build(&registry);
        let candidates = vec![None; classes.len()];
        Ok(Lexer {
            rules,
            classes,
            ends: Vec::new(),
            candidates,
        })
    }

    /// Tokenizes a whole document (UTF-16 units), calling `emit` for each token in order.
    pub(super) fn lex(&mut self, text: &[u16], mut emit: impl FnMut(Token)) {
        let mut pos = 0;
        while pos < text.len() {
            let (rule_idx, token_end) = self.best_rule(text, pos);
            let action = self.rules[rule_idx].action;
            let matched = &text[pos..token_end];
            let (token, consumed) = apply(action, matched);
            if let Some(tok) = token {
                emit(tok);
            }
            // Every rule consumes at least one unit (none can match the empty string and the
            // push-backs always leave some text), so the scan advances.
            pos += consumed.max(1);
        }
    }

    /// The winning rule at `pos` and where its token (without trailing context) ends.
    fn best_rule(&mut self, text: &[u16], pos: usize) -> (usize, usize) {
        let mut best: Option<(usize, usize, usize)> = None; // (total_end, rule, token_end)
        let class = self.classes.class(text[pos]);
        let candidates = match self.candidates[class].take() {
            Some(c) => c,
            None => (0..self.rules.len())
                .filter(|&i| self.rules[i].head.can_start_with(class, &self.classes))
                .map(|i| i as u8)
                .collect(),
        };
        for &idx in &candidates {
            let idx = usize::from(idx);
            let classes = &self.classes;
            let rule = &mut self.rules[idx];
            let candidate = match &mut rule.context {
                None => rule.head.longest(text, pos, classes).map(|e| (e, e)),
                Some(context) => {
                    self.ends.clear();
                    let ends = &mut self.ends;
                    rule.head.for_each_end(text, pos, classes, |e| ends.push(e));
                    let mut total: Option<usize> = None;
                    for &e1 in ends.iter() {
                        if let Some(e2) = context.longest(text, e1, classes) {
                            if total.is_none_or(|t| e2 > t) {
                                total = Some(e2);
                            }
                        }
                    }
                    total.and_then(|t| {
                        ends.iter()
                            .rev()
                            .filter(|&&e1| e1 <= t)
                            .find(|&&e1| context.matches(text, e1, t, classes))
                            .map(|&e1| (t, e1))
                    })
                }
            };
            if let Some((total, token_end)) = candidate {
                if total > pos && best.is_none_or(|(t, _, _)| total > t) {
                    best = Some((total, idx, token_end));
                }
            }
        }
        self.candidates[class] = Some(candidates);
        match best {
            Some((_, idx, token_end)) => (idx, token_end),
            // Unreachable in practice: the last rule matches any unit but `\n`, which the
            // newline rule matches. Treat a lone unit as untokenizable all the same.
            None => (self.rules.len() - 1, pos + 1),
        }
    }
}

/// Java's `String` from UTF-16, with an unpaired surrogate written as `?` (what Java's UTF-8
/// encoder writes for it).
fn utf16_to_string(units: &[u16]) -> String {
    char::decode_utf16(units.iter().copied())
        .map(|r| r.unwrap_or('?'))
        .collect()
}

fn replace_parens(s: &str) -> String {
    s.replace('(', "-LRB-").replace(')', "-RRB-")
}

fn latex_quotes(s: &str, probably_left: bool) -> String {
    let (single, double) = if probably_left {
        ("`", "``")
    } else {
        ("'", "''")
    };
    let s = s.replace("&apos;", single).replace('\'', single);
    let s = s.replace('"', double).replace("&quot;", double);
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '\u{91}' | '\u{2018}' | '\u{201B}' | '\u{2039}' => out.push('`'),
            '\u{92}' | '\u{2019}' | '\u{203A}' => out.push('\''),
            '\u{93}' | '\u{201C}' | '\u{AB}' => out.push_str("``"),
            '\u{94}' | '\u{201D}' | '\u{BB}' => out.push_str("''"),
            other => out.push(other),
        }
    }
    out
}

/// Case-insensitive replacement of `&amp;` by `&` (Java's `(?i:&amp;)`).
fn normalize_amp(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(idx) = rest.find('&') {
        out.push_str(&rest[..idx]);
        let tail = &rest[idx..];
        if tail.len() >= 5 && tail.is_char_boundary(5) && tail[..5].eq_ignore_ascii_case("&amp;") {
            out.push('&');
            rest = &tail[5..];
        } else {
            out.push('&');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

fn remove_soft_hyphens(s: &str) -> String {
    if !s.contains('\u{AD}') {
        return s.to_owned();
    }
    let out: String = s.chars().filter(|&c| c != '\u{AD}').collect();
    if out.is_empty() {
        "-".to_owned()
    } else {
        out
    }
}

/// Applies a rule's action: the token to emit (if any) and how many units it consumed.
fn apply(action: Action, matched: &[u16]) -> (Option<Token>, usize) {
    let len = matched.len();
    let text = || utf16_to_string(matched);
    let word = |s: String| Some(Token::Word(s));
    match action {
        Action::Keep => (word(text()), len),
        Action::PushBack(n) => (word(utf16_to_string(&matched[..len - n])), len - n),
        Action::SpaceToNbsp => (word(text().replace(' ', "\u{A0}")), len),
        Action::Dash => (word("--".to_owned()), len),
        Action::Amp => (word(normalize_amp(&text())), len),
        Action::SoftHyphen => (word(remove_soft_hyphens(&text())), len),
        Action::Quote(left) => (word(latex_quotes(&text(), left)), len),
        Action::Fraction => {
            let s = text()
                .replace('\u{BC}', "1/4")
                .replace('\u{BD}', "1/2")
                .replace('\u{BE}', "3/4")
                .replace('\u{2153}', "1/3")
                .replace('\u{2154}', "2/3");
            (word(s), len)
        }
        Action::Currency => {
            let s: String = text()
                .replace('\u{A2}', "cents")
                .replace('\u{A3}', "#")
                .chars()
                .map(|c| match c {
                    '\u{80}' | '\u{A4}' | '\u{20A0}' | '\u{20AC}' => '$',
                    other => other,
                })
                .collect();
            (word(s), len)
        }
        Action::AcronymEnd => {
            if len == 2 {
                (word(utf16_to_string(&matched[..1])), 1)
            } else {
                (word(text()), len - 1)
            }
        }
        Action::AbbrevEnd => (word(text()), len - 1),
        Action::Phone => (word(replace_parens(&text().replace(' ', "\u{A0}"))), len),
        Action::Parens => (word(replace_parens(&text())), len),
        Action::Text(t) => (word(t.to_owned()), len),
        Action::Hyphens => {
            if (3..=4).contains(&len) {
                (word("--".to_owned()), len)
            } else {
                (word(text()), len)
            }
        }
        Action::Ellipsis => (word("...".to_owned()), len),
        Action::Skip | Action::Untokenizable => (None, len),
        Action::Newline => (Some(Token::Newline), len),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lex(s: &str) -> Vec<String> {
        let mut lexer = Lexer::new().expect("rules compile");
        let units: Vec<u16> = s.encode_utf16().collect();
        let mut out = Vec::new();
        lexer.lex(&units, |t| {
            out.push(match t {
                Token::Word(w) => w,
                Token::Newline => "*NL*".to_owned(),
            })
        });
        out
    }

    #[test]
    fn rules_compile() {
        assert!(Lexer::new().is_ok());
    }

    // Expected outputs below are what the CoreNLP 3.4.1 jar printed for these lines (run by
    // hand with `PTBTokenizer -preserveLines`, no lower-casing).
    #[test]
    fn matches_the_jar_on_known_lines() {
        assert_eq!(lex("a'bcd x"), ["a", "`", "bcd", "x"]);
        assert_eq!(lex("A'bcd x"), ["A'bcd", "x"]);
        assert_eq!(lex("U.S. About it"), ["U.S.", ".", "About", "it"]);
        assert_eq!(lex("U.S. about it"), ["U.S.", "about", "it"]);
        assert_eq!(lex("Z. ABOUT\n"), ["Z", ".", "ABOUT", "*NL*"]);
        assert_eq!(lex("isn't"), ["is", "n't"]);
        assert_eq!(lex("IsN'T"), ["Is", "N'T"]);
        assert_eq!(lex("x\r\ny\u{b}z"), ["x", "*NL*", "y", "*NL*", "z"]);
        assert_eq!(lex("\"hello\" \"x"), ["``", "hello", "''", "``", "x"]);
        assert_eq!(lex("' hi'"), ["'", "hi", "'"]);
        assert_eq!(lex("'ti\u{17F} x"), ["'t", "i\u{17F}", "x"]);
        assert_eq!(lex("CANNOT"), ["CAN", "NOT"]);
        assert_eq!(lex("foo\u{AD}bar"), ["foobar"]);
        assert_eq!(lex("3 1/2 cups"), ["3\u{A0}1/2", "cups"]);
        assert_eq!(lex("(555) 123-4567"), ["-LRB-555-RRB-\u{A0}123-4567"]);
        assert_eq!(lex("<a href='x y'> z"), ["<a\u{A0}href='x\u{A0}y'>", "z"]);
        assert_eq!(lex("\u{1}\u{2} ab"), ["ab"]);
        assert_eq!(lex("l'amour d'accord"), ["l'amour", "d'accord"]);
        // A rule whose pattern can end past its longest trailing-context match (FILENAME ends
        // after `a.txt` and after `a.txt.gz`; only the first is followed by its context).
        assert_eq!(
            lex("a.txt.gz\nsee photo.jpg.zip, ok"),
            ["a.txt.gz", "*NL*", "see", "photo.jpg.zip", ",", "ok"]
        );
    }
}
